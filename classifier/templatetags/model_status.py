"""The model's readiness in the page header (``inference.readiness``: loads nothing)."""

from django import template

from classifier import inference

register = template.Library()

LABELS = {
    "idle": ("Model loads with the first image", "text-bg-secondary"),
    "loading": ("Model loading…", "text-bg-warning"),
    "ready": ("Model ready", "text-bg-success"),
    "unavailable": ("Model unavailable: images are kept as pending", "text-bg-danger"),
}


@register.inclusion_tag("classifier/_model_status.html")
def model_status():
    state = inference.readiness()
    text, css = LABELS[state["state"]]
    return {"state": state["state"], "text": text, "css": css, "detail": state["detail"]}
