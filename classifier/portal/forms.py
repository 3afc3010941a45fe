"""Portal forms: they parse input only; the services decide what is allowed."""

from django import forms
from django.conf import settings

from classifier.cells.validation import ImageRejected, human_size
from classifier.jobs import batch_files
from classifier.models import BatchJob, CellClass, accession_validator


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class MultipleImageField(forms.FileField):
    """One or many uploaded images (Django's documented multiple-file pattern).

    Required (the single-cell upload): no file is "This field is required.". Optional (the batch page,
    which may send a ZIP instead): no file is an empty list.
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("widget", MultipleFileInput(attrs={"accept": "image/*", "multiple": True}))
        super().__init__(*args, **kwargs)

    def clean(self, data, initial=None):
        single = super().clean
        if isinstance(data, list | tuple):
            items = [item for item in data if item]
        else:
            items = [data] if data else []
        if not items:
            return [single(None, initial)] if self.required else []
        return [single(item, initial) for item in items]


class UploadForm(forms.Form):
    images = MultipleImageField(
        label="Cell images",
        help_text="One or many JPEG, PNG, TIFF, BMP or WebP images, one white cell each.",
        # Empty files are reported by the image check with a clear message, not as "no file".
        allow_empty_file=True,
    )
    accession = forms.CharField(
        label="Specimen accession number",
        required=False,
        max_length=64,
        validators=[accession_validator],
        help_text="Optional: groups the images into one specimen for the differential.",
    )

    def clean_accession(self):
        return self.cleaned_data["accession"].strip()


class ReviewForm(forms.Form):
    label = forms.ChoiceField(choices=CellClass.choices)
    seen = forms.CharField(required=False, max_length=64)  # the cell's review_version on the page


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
    images = MultipleImageField(
        required=False,
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
