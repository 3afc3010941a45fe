"""The model's readiness in the page header (``inference.readiness``: loads nothing)."""

from django import template

from classifier import inference

register = template.Library()

# (badge text, colour, what it means: the badge's title)
LABELS = {
    "idle": ("Model idle", "text-bg-secondary", "The model loads with the first image."),
    "loading": ("Model loading…", "text-bg-warning", "The model is loading; the first image waits for it."),
    "ready": ("Model ready", "text-bg-success", "The model is loaded."),
    "unavailable": (
        "Model unavailable", "text-bg-danger", "The model could not load; images are kept as pending."
    ),
}


@register.inclusion_tag("classifier/_model_status.html")
def model_status():
    state = inference.readiness()
    text, css, meaning = LABELS[state["state"]]
    title = f"{meaning} {state['detail']}".strip()
    return {"state": state["state"], "text": text, "css": css, "title": title}
