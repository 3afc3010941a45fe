"""The single-cell upload page (one or many images; an HTML page or, for scripts, JSON)."""

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views import View

from classifier.cells import services as cell_services
from classifier.cells import spool
from classifier.cells.validation import ImageRejected, check_size
from classifier.permissions import can_submit
from classifier.portal.forms import UploadForm
from classifier.portal.views import common


class UploadView(View):
    """One or many images. The page's script posts them one by one (JSON answers, a
    progress bar); without JavaScript the form posts them all at once."""

    template_name = "classifier/upload.html"

    def dispatch(self, request, *args, **kwargs):
        if not can_submit(request.user):
            if common.wants_json(request):
                return JsonResponse({"error": common.NO_ROLE_MESSAGE, "code": "no_role"}, status=403)
            return render(request, "classifier/no_role.html", {"message": common.NO_ROLE_MESSAGE}, status=403)
        return super().dispatch(request, *args, **kwargs)

    def get(self, request):
        return render(request, self.template_name, {"form": UploadForm()})

    def post(self, request):
        form = UploadForm(request.POST, request.FILES)
        if not form.is_valid():
            if common.wants_json(request):
                errors = "; ".join(f"{e}" for field in form.errors.values() for e in field)
                return JsonResponse({"error": errors, "code": "invalid"}, status=400)
            return render(request, self.template_name, {"form": form}, status=400)
        created, failures, spooled = [], [], []
        for upload in form.cleaned_data["images"]:
            try:
                check_size(upload.size)  # refuse before reading it into memory
                created.append(
                    cell_services.classification_create(
                        user=request.user,
                        data=upload.read(),
                        filename=upload.name,
                        accession=form.cleaned_data["accession"] or None,
                    )
                )
            except (ImageRejected, ValidationError) as exc:
                failures.append((upload.name, common.error_text(exc), getattr(exc, "http_status", 400)))
            except spool.UploadSpooled as exc:  # kept for later; the next file may still get in
                spooled.append((upload.name, exc.reference))
        if spooled:
            return self._spooled_answer(request, form, created, failures, spooled)
        if common.wants_json(request):
            return self._json_answer(created, failures)
        if not created:
            return render(
                request, self.template_name, {"form": form, "failures": failures}, status=failures[0][2]
            )
        for name, message, _ in failures:
            messages.error(request, f"{name}: {message}")
        if len(created) == 1:
            return redirect("classification-detail", pk=created[0].pk)
        messages.success(request, f"{len(created)} images classified.")
        return redirect("classification-list")

    def _spooled_answer(self, request, form, created, failures, spooled):
        """503: the database failed for some files, which were kept (spooled) to be classified later."""
        references = ", ".join(reference for _, reference in spooled)
        if len(spooled) == 1:
            message = (
                "The database is busy or unavailable. Your upload was kept and will be classified when "
                f"it is back (reference {references}); do not send it again."
            )
        else:
            message = (
                f"The database is busy or unavailable. {len(spooled)} uploads were kept and will be "
                f"classified when it is back (references {references}); do not send them again."
            )
        if common.wants_json(request):
            response = JsonResponse(
                {
                    "error": message,
                    "code": "database_unavailable",
                    "spooled": [{"filename": n, "reference": r} for n, r in spooled],
                    "ids": [cell.pk for cell in created],
                    "errors": [{"filename": n, "error": m} for n, m, _ in failures],
                },
                status=503,
            )
        else:
            response = render(
                request,
                self.template_name,
                {
                    "form": form,
                    "created": created,
                    "failures": failures,
                    "spooled": spooled,
                    "spool_message": message,
                },
                status=503,
            )
        response["Retry-After"] = "5"
        return response

    def _json_answer(self, created, failures):
        if failures and not created:
            name, message, status = failures[0]
            return JsonResponse({"error": message, "filename": name}, status=status)
        cell = created[0]
        return JsonResponse(
            {
                "id": cell.pk,
                "url": reverse("classification-detail", args=[cell.pk]),
                "status": cell.status,
                # An unidentified cell has no class yet: its top guess is named as such, not as its label.
                "label": cell.get_predicted_label_display() if cell.status == "classified" else "",
                "top_guess": cell.get_predicted_label_display() if cell.status == "unidentified" else "",
                "confidence": cell.confidence,
                "errors": [{"filename": n, "error": m} for n, m, _ in failures],
            },
            status=201,
        )
