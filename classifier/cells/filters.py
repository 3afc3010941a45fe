"""Filters for result lists, shared by the portal history page and the API."""

import django_filters
from django import forms
from django.db.models import Q

from classifier.models import CellClass, Classification, ReviewState, Status


class ClassificationFilter(django_filters.FilterSet):
    """Filter by label (the reviewer's, else the model's if it classified the cell), state, accession,
    date range; search ``q``."""

    q = django_filters.CharFilter(
        method="filter_q", label="Search",
        help_text="File name, accession number or external id.",
    )
    label = django_filters.ChoiceFilter(
        choices=CellClass.choices, method="filter_label", label="Class", empty_label="Any"
    )
    status = django_filters.ChoiceFilter(choices=Status.choices, empty_label="Any")
    review_state = django_filters.ChoiceFilter(
        choices=ReviewState.choices, label="Review state", empty_label="Any"
    )
    accession = django_filters.CharFilter(field_name="specimen__accession", lookup_expr="iexact")
    created_after = django_filters.DateFilter(
        field_name="created_at", lookup_expr="date__gte", label="From",
        widget=forms.DateInput(attrs={"type": "date"}),
    )
    created_before = django_filters.DateFilter(
        field_name="created_at", lookup_expr="date__lte", label="To",
        widget=forms.DateInput(attrs={"type": "date"}),
    )

    class Meta:
        model = Classification
        fields = ["q", "label", "status", "review_state", "accession", "created_after", "created_before"]

    def filter_q(self, queryset, name, value):
        value = value.strip()
        if not value:
            return queryset
        return queryset.filter(
            Q(original_filename__icontains=value)
            | Q(specimen__accession__icontains=value)
            | Q(external_id__icontains=value)
        )

    def filter_label(self, queryset, name, value):
        """The label that counts (``Classification.label``): unidentified cells have none until reviewed."""
        return queryset.filter(
            Q(final_label=value) | Q(final_label="", status=Status.CLASSIFIED, predicted_label=value)
        )
