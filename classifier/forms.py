"""Portal forms: they parse input only; the services decide what is allowed."""

from django import forms

from classifier.models import CellClass, accession_validator


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class MultipleImageField(forms.FileField):
    """One or many uploaded files (Django's documented multiple-file pattern)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("widget", MultipleFileInput(attrs={"accept": "image/*", "multiple": True}))
        super().__init__(*args, **kwargs)

    def clean(self, data, initial=None):
        single = super().clean
        if isinstance(data, list | tuple):
            if not data:
                return [single(None, initial)]  # "This field is required."
            return [single(item, initial) for item in data]
        return [single(data, initial)]


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
