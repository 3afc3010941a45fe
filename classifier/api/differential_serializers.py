"""API representations of a specimen's differential (``cells.differential.Differential``): its rows,
the specimen check and the signed differential."""

from rest_framework import serializers

from classifier.models import CellClass


class NotCountedRowSerializer(serializers.Serializer):
    label = serializers.ChoiceField(choices=CellClass.choices)
    name = serializers.CharField()
    count = serializers.IntegerField(min_value=0)


class ClassRowSerializer(NotCountedRowSerializer):
    percent = serializers.FloatField(
        allow_null=True,
        help_text=(
            "Percent of the white cells counted (the rows add up to 100.0); null when none is counted yet."
        ),
    )
    reference_low = serializers.FloatField(
        allow_null=True,
        help_text="Reference range, % of white cells, for the ordered patient's age and sex (adult when "
        "the age is unknown; see reference_note); null where none is agreed.",
    )
    reference_high = serializers.FloatField(allow_null=True)
    flag = serializers.ChoiceField(
        choices=[("H", "High"), ("L", "Low")], allow_null=True,
        help_text="H above, L below the reference range, null within it (or no count).",
    )


class Per100RowSerializer(NotCountedRowSerializer):
    per_100_white_cells = serializers.FloatField(
        allow_null=True, help_text="Cells per 100 white cells counted; null when none is counted yet."
    )
    reference_low = serializers.FloatField(
        allow_null=True, help_text="Reference range per 100 white cells (as for classes); null: none."
    )
    reference_high = serializers.FloatField(allow_null=True)
    flag = serializers.ChoiceField(choices=[("H", "High"), ("L", "Low")], allow_null=True)


class AbsoluteRowSerializer(serializers.Serializer):
    label = serializers.ChoiceField(choices=CellClass.choices)
    name = serializers.CharField()
    count = serializers.IntegerField(min_value=0)
    value = serializers.FloatField(help_text="Absolute count, 10^9/L (UCUM 10*9/L), two decimals.")
    reference_low = serializers.FloatField(
        allow_null=True,
        help_text="Adult absolute range, 10^9/L; null for a child's age or where none is given.",
    )
    reference_high = serializers.FloatField(allow_null=True)
    flag = serializers.ChoiceField(choices=[("H", "High"), ("L", "Low")], allow_null=True)


class SpecimenCheckSerializer(serializers.Serializer):
    """The specimen check: far more cells flagged by the model than in the labs it was validated on
    raises the alarm, and the specimen is reviewed cell by cell (no bulk accept)."""

    cells = serializers.IntegerField(min_value=0, help_text="Cells the model has read (pending ones not).")
    flagged = serializers.IntegerField(min_value=0, help_text="Of them, the cells the model flagged.")
    flagged_share = serializers.FloatField(help_text="flagged / cells, four decimals (0 with no cell).")
    alarm_at = serializers.IntegerField(
        allow_null=True,
        help_text="The smallest flagged count that raises the alarm for this many cells; null: fewer "
        "cells than the check judges (10).",
    )
    alarm = serializers.BooleanField(help_text="True: review every cell one by one.")

    def to_representation(self, instance) -> dict:
        return instance.to_dict()


class DifferentialSerializer(serializers.Serializer):
    """The white-cell differential: reviewed labels count; unreviewed unidentified cells are apart.

    ``classes``: the white-cell classes (in the total, percentages add up to 100);
    ``per_100_white_cells``: nucleated red cells per 100 white cells (not in the total);
    ``not_counted``: platelets, smudge cells and artefacts seen (never counted).
    """

    total_cells = serializers.IntegerField(min_value=0)
    counted_cells = serializers.IntegerField(min_value=0, help_text="White cells in the total.")
    unidentified = serializers.IntegerField(min_value=0, help_text="Unidentified cells awaiting review.")
    pending = serializers.IntegerField(min_value=0, help_text="Cells the model has not classified yet.")
    unreviewed = serializers.IntegerField(min_value=0)
    classes = ClassRowSerializer(many=True)
    per_100_white_cells = Per100RowSerializer(many=True)
    not_counted = NotCountedRowSerializer(many=True)
    flag_comment = serializers.CharField(
        help_text="Why no row is flagged H/L: fewer white cells counted than the lab's minimum "
        "(HEMATOVISION_MIN_CELLS_FOR_FLAGS); empty when flags are given."
    )
    reference_note = serializers.CharField(
        help_text="Which reference ranges the rows carry: those for the ordered patient's age (and sex), "
        "or the adult ones when the age is not known."
    )
    wbc_count = serializers.FloatField(
        allow_null=True, help_text="The white-cell count the LIS order gave, 10^9/L; null: none."
    )
    absolute = AbsoluteRowSerializer(
        many=True,
        help_text="Each white-cell class's absolute count (its share of wbc_count); empty without one.",
    )
    specimen_check = SpecimenCheckSerializer(
        allow_null=True,
        help_text="The specimen check: an alarm when far more cells are flagged than in the labs the "
        "model was validated on (the stain, camera or cells differ); such a specimen is reviewed cell "
        "by cell.",
    )


class SignedDifferentialSerializer(DifferentialSerializer):
    """The differential a sign-off answers with: what was signed, by whom, when."""

    accession = serializers.CharField()
    signed = serializers.BooleanField()
    signed_by = serializers.CharField(allow_null=True)
    signed_at = serializers.DateTimeField(allow_null=True)
    ready_to_sign = serializers.BooleanField()
