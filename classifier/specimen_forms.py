"""Forms of the specimen pages: they parse input only; the job services decide what is allowed."""

from django import forms
from django.conf import settings

from classifier.jobs import batch_files
from classifier.models import BatchJob, accession_validator
from classifier.validation import ImageRejected, human_size


class _MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class _MultipleFileField(forms.FileField):
    """Zero, one or many uploaded files."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("widget", _MultipleFileInput(attrs={"multiple": True, "accept": "image/*"}))
        kwargs.setdefault("required", False)
        super().__init__(*args, **kwargs)

    def clean(self, data, initial=None):
        single = super().clean
        if isinstance(data, list | tuple):
            return [single(item, initial) for item in data if item]
        return [single(data, initial)] if data else []


class BatchUploadForm(forms.Form):
    accession = forms.CharField(
        label="Specimen accession number", max_length=64, validators=[accession_validator]
    )
    kind = forms.ChoiceField(
        label="Images are",
        choices=BatchJob.Kind.choices,
        initial=BatchJob.Kind.CELLS,
        widget=forms.RadioSelect,
    )
    images = _MultipleFileField(
        label="Images",
        allow_empty_file=True,
        help_text="Select many JPEG, PNG, TIFF, BMP or WebP files at once.",
    )
    archive = forms.FileField(
        label="Or a ZIP archive",
        required=False,
        allow_empty_file=True,
        widget=forms.ClearableFileInput(attrs={"accept": ".zip,application/zip"}),
        help_text="Sub-folders are fine; files that are not images are listed as failed.",
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        image_limit = human_size(settings.HEMATOVISION_MAX_UPLOAD_BYTES)
        max_files = batch_files.max_files()
        self.fields["images"].help_text += f" Up to {max_files} files, each at most {image_limit}."
        self.fields["archive"].help_text += f" At most {human_size(batch_files.max_archive_bytes())}."

    def clean_accession(self):
        return self.cleaned_data["accession"].strip()

    def clean_archive(self):
        archive = self.cleaned_data["archive"]
        if archive:
            try:
                batch_files.check_archive_size(archive)  # the job's own rule, shown next to the field
            except ImageRejected as exc:
                raise forms.ValidationError(exc.message, code=exc.code) from None
        return archive

    def clean(self):
        cleaned = super().clean()
        if not cleaned.get("images") and not cleaned.get("archive") and "archive" not in self.errors:
            raise forms.ValidationError("Choose some images or a ZIP archive.")
        return cleaned


class DateRangeForm(forms.Form):
    start = forms.DateField(label="From", required=False, widget=forms.DateInput(attrs={"type": "date"}))
    end = forms.DateField(label="To", required=False, widget=forms.DateInput(attrs={"type": "date"}))

    def clean(self):
        cleaned = super().clean()
        start, end = cleaned.get("start"), cleaned.get("end")
        if start and end and start > end:
            raise forms.ValidationError("The start date is after the end date.")
        return cleaned
