"""The dashboard and the model page (what is served, how it was tested, whether it is ready)."""

from django.http import JsonResponse
from django.views.generic import TemplateView

from classifier import inference
from classifier.cells import classes
from classifier.cells import selectors as cell_selectors
from classifier.permissions import can_submit
from classifier.portal.views import common


class DashboardView(TemplateView):
    template_name = "classifier/dashboard.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        stats = cell_selectors.dashboard_stats(user=self.request.user)
        context["stats"] = stats
        context["has_role"] = can_submit(self.request.user)
        context["no_role_message"] = common.NO_ROLE_MESSAGE
        # Classes the model has called at least once (a four-class model's results show four bars).
        shown = [c for c in classes.TABLE if stats["by_label"].get(c.code)]
        context["class_rows"] = [(c.name, stats["by_label"][c.code]) for c in shown]
        context["chart_data"] = {
            "labels": [c.name for c in shown],
            "counts": [stats["by_label"][c.code] for c in shown],
            "colours": [c.colour for c in shown],
        }
        return context


class ModelInfoView(TemplateView):
    """The model behind the results: version, calibration, figures and limits (as ``/api/v1/model/``)."""

    template_name = "classifier/model_info.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        try:
            info = inference.model_summary()
        except inference.PredictorUnavailable:
            info = None
        context["info"] = info
        if info:
            context["other_classes"] = [c.name for c in classes.TABLE if c.code not in info["classes"]]
            fractions = info["calibration"]["training_class_fractions"] or {}
            bias = info["calibration"]["class_bias"] or {}
            validation = info["validation"] or {}
            tests = _test_sets(info["test"])
            context["test_sets"] = tests
            context["class_rows"] = [
                {
                    "name": name,
                    "bias": bias.get(name),
                    "share_pct": 100 * fractions[name] if name in fractions else None,
                    "val_recall": validation.get("recall", {}).get(name),
                    # one per held-out test set; a dash where that set has no cell of the class
                    "test_recalls": [t["recall"].get(name) for t in tests] or [None],
                }
                for name in info["classes"]
            ]
            rate = validation.get("flagged_rate")
            context["val_flagged_pct"] = None if rate is None else 100 * rate
        return context


TEST_SET_NAMES = {"bccd": "BCCD TEST", "pbc": "PBC test"}


def _test_sets(test: dict | None) -> list[dict]:
    """The card's held-out figures as rows: one per source (name, images, accuracy, recall, flagged
    and silent-error percentages); the first model's single TEST run as one row."""
    if not test:
        return []
    per_source = test.get("per_source") or {"": test | {"flagged_rate": test.get("unidentified_rate")}}
    rows = []
    for source, figures in per_source.items():
        flagged, silent = figures.get("flagged_rate"), figures.get("silent_error_rate")
        rows.append(
            {
                "name": TEST_SET_NAMES.get(source, source or "Official TEST split"),
                "n_images": figures.get("n_images"),
                "accuracy": figures.get("accuracy"),
                "recall": figures.get("recall") or {},
                "flagged_pct": None if flagged is None else 100 * flagged,
                "silent_pct": None if silent is None else 100 * silent,
            }
        )
    return rows


def model_ready_view(request):
    """The model's readiness (``inference.readiness``) for the header badge's script; loads nothing."""
    return JsonResponse(inference.readiness())
