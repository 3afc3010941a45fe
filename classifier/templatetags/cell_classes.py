"""The class colours as CSS, written from the cell-class table (hematovision.css names no class)."""

from django import template
from django.utils.safestring import mark_safe

from classifier.cells import classes

register = template.Library()


def class_styles_css() -> str:
    """``.cell-<code>`` backgrounds and badge text that reaches WCAG AA on each (``text_colour``)."""
    return "\n".join(
        f".cell-{c.code.lower()} {{ background-color: {c.colour} !important; }}\n"
        f".cell-badge.cell-{c.code.lower()} {{ color: {c.text_colour}; }}"
        for c in classes.TABLE
    )


@register.simple_tag
def cell_class_styles():
    # Codes are [A-Z_] and colours #rrggbb (tests check both): nothing here needs escaping.
    return mark_safe(f"<style>\n{class_styles_css()}\n</style>")  # noqa: S308
