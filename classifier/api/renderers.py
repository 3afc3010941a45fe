"""Media types the API answers besides JSON: FHIR JSON, HL7 v2 ER7 text, image downloads."""

from rest_framework.renderers import BaseRenderer, JSONRenderer

from classifier.interop.fhir import FHIR_MEDIA_TYPE
from classifier.interop.hl7 import HL7_MEDIA_TYPE


class FHIRJSONRenderer(JSONRenderer):
    media_type = FHIR_MEDIA_TYPE
    format = "fhir"


class HL7Renderer(BaseRenderer):
    """ER7 text as built; segments end with a carriage return, as HL7 v2 requires."""

    media_type = HL7_MEDIA_TYPE
    format = "hl7"
    charset = "utf-8"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        return data.encode(self.charset) if isinstance(data, str) else data


class HL7TextRenderer(HL7Renderer):
    """The same ER7 text for clients that ask for ``text/plain`` (issue 19: it was a 406)."""

    media_type = "text/plain"
    format = "txt"


class ImageRenderer(BaseRenderer):
    """Lets a client ask for ``image/*``; the views stream the stored file themselves."""

    media_type = "image/*"
    format = "image"
    charset = None
    render_style = "binary"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        return data


class _FileRenderer(BaseRenderer):
    """Lets a client ask for the file's type in Accept (errors are JSON: JSONErrorsMixin)."""

    charset = None

    def render(self, data, accepted_media_type=None, renderer_context=None):
        if isinstance(data, bytes | str):
            return data
        return JSONRenderer().render(data)


class PdfRenderer(_FileRenderer):
    media_type = "application/pdf"
    format = "pdf"


class CsvRenderer(_FileRenderer):
    media_type = "text/csv"
    format = "csv"
