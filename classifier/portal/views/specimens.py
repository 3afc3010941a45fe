"""Specimen pages: list, detail with differential and sign-off, batch upload, job progress, reports.

Each view parses input, calls one service or selector, and renders; ``DoesNotExist``
becomes 404, ``PermissionDenied`` 403 and ``ValidationError`` a message.
"""


from django.contrib import messages
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db.models import Count, Q
from django.http import Http404, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views import View
from django.views.decorators.http import require_POST
from django.views.generic import FormView, ListView, TemplateView

from classifier.jobs import fields
from classifier.jobs import selectors as job_selectors
from classifier.jobs import services as job_services
from classifier.lookups import job_or_404, specimen_cell_or_404, specimen_or_404
from classifier.models import BatchItem, BatchJob, ReviewState
from classifier.permissions import can_review, can_submit
from classifier.portal.forms import BatchUploadForm, DateRangeForm
from classifier.portal.views import common
from classifier.responses import private_attachment
from classifier.specimens import report_csv, report_pdf
from classifier.specimens import selectors as specimen_selectors


class SpecimenListView(ListView):
    template_name = "classifier/specimens/list.html"
    context_object_name = "specimens"
    paginate_by = 25

    def get_queryset(self):
        return (
            specimen_selectors.with_check_counts(specimen_selectors.specimen_list(user=self.request.user))
            .annotate(
                n_cells=Count("cells"),
                n_unreviewed=Count("cells", filter=Q(cells__review_state=ReviewState.UNREVIEWED)),
            )
            .order_by("-created_at", "-id")
        )

    def paginate_queryset(self, queryset, page_size):
        """An out-of-range or malformed ?page= shows the last or first page (as the history does)."""
        paginator = self.get_paginator(queryset, page_size)
        page = paginator.get_page(self.request.GET.get(self.page_kwarg))
        return paginator, page, page.object_list, page.has_other_pages()

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["specimens"] = specimen_selectors.check_listed(context["specimens"])
        context["range_form"] = self.kwargs.get("range_form") or DateRangeForm()
        context["can_submit"] = can_submit(self.request.user)
        return context


class SpecimenDetailView(TemplateView):
    template_name = "classifier/specimens/detail.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        specimen = specimen_or_404(self.request, kwargs["accession"])
        differential = specimen_selectors.specimen_differential(specimen=specimen)
        context.update(
            specimen=specimen,
            differential=differential,
            gallery=specimen_selectors.specimen_gallery(specimen=specimen),
            jobs=job_selectors.job_list(user=self.request.user).filter(specimen=specimen)[:20],
            can_review=can_review(self.request.user),
            can_submit=can_submit(self.request.user),
        )
        return context


def specimen_cell_image_view(request, accession, pk):
    """A cell image of the specimen's gallery, for users who may see the cell."""
    cell = specimen_cell_or_404(request, accession, pk)
    # As every patient image: never kept by a cache, 404 when the stored file is gone.
    return common.private_file(cell.image, f"cell-{cell.pk}")


def specimen_report_pdf_view(request, accession):
    specimen = specimen_or_404(request, accession)
    pdf = report_pdf.specimen_report_pdf(specimen=specimen)
    response = HttpResponse(pdf, content_type="application/pdf")
    response["Content-Disposition"] = f'inline; filename="{specimen.accession}-report.pdf"'
    return response


def specimen_report_csv_view(request, accession):
    specimen = specimen_or_404(request, accession)
    return private_attachment(
        report_csv.specimen_report_csv(specimen=specimen),
        "text/csv; charset=utf-8",
        f"{specimen.accession}-cells.csv",
    )


def specimens_export_csv_view(request):
    form = DateRangeForm(request.GET)
    if not form.is_valid():  # the list again, with the dates as typed and the errors at the form
        response = SpecimenListView.as_view()(request, range_form=form)
        response.status_code = 400
        return response
    start, end = form.cleaned_data["start"], form.cleaned_data["end"]
    specimens = specimen_selectors.specimens_in_range(user=request.user, start=start, end=end)
    name = f"specimens-{start or 'start'}-to-{end or timezone.localdate()}.csv"
    return private_attachment(report_csv.specimens_csv(specimens=specimens), "text/csv; charset=utf-8", name)


class BatchUploadView(FormView):
    """Many images or a ZIP for one specimen, as one background job."""

    template_name = "classifier/specimens/batch_upload.html"
    form_class = BatchUploadForm
    kind = BatchJob.Kind.CELLS

    def get_initial(self):
        return {"kind": self.kind, "accession": self.request.GET.get("accession", "")}

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["whole_field"] = self.kind == BatchJob.Kind.FIELDS
        return context

    def form_valid(self, form):
        try:
            job = job_services.job_create(
                user=self.request.user,
                accession=form.cleaned_data["accession"],
                files=form.cleaned_data["images"],
                archive=form.cleaned_data["archive"],
                kind=form.cleaned_data["kind"],
            )
        except ValidationError as exc:
            form.add_error(None, " ".join(exc.messages))
            return self.form_invalid(form)
        return redirect("job-detail", pk=job.pk)


class WholeFieldUploadView(BatchUploadView):
    kind = BatchJob.Kind.FIELDS


class JobDetailView(TemplateView):
    template_name = "classifier/specimens/job_detail.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        job = job_or_404(self.request, kwargs["pk"])
        context.update(
            job=job,
            progress=job_selectors.job_progress(job=job),
            can_rerun=job.is_finished
            and (job.created_by_id == self.request.user.pk or can_review(self.request.user)),
        )
        return context


def job_status_view(request, pk):
    """The job's progress as JSON (polled by static/js/job_progress.js)."""
    return JsonResponse(job_selectors.job_progress(job=job_or_404(request, pk)))


@require_POST
def job_rerun_view(request, pk):
    job = job_or_404(request, pk)
    try:
        job_services.job_rerun(job=job, user=request.user)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        messages.info(request, "The failed files are queued again.")
    return redirect("job-detail", pk=job.pk)


class JobFieldImageView(View):
    """A whole field of a job with numbered, labelled boxes around the located cells."""

    def get(self, request, pk, position):
        job = job_or_404(request, pk)
        try:
            item = job.items.get(position=position)
        except BatchItem.DoesNotExist:
            raise Http404("No such file in this job.") from None
        if job.kind != BatchJob.Kind.FIELDS or not item.source:
            raise Http404("No field image for this file.")
        row = next(r for r in job_selectors.job_progress(job=job)["items"] if r["position"] == item.position)
        with item.source.open("rb") as handle:
            png = fields.field_annotated_png(data=handle.read(), cells=row.get("cells", []))
        return HttpResponse(png, content_type="image/png")


JOB_PAGE_SIZE = 50


def job_list_view(request):
    jobs = job_selectors.job_list(user=request.user)
    page = Paginator(jobs, JOB_PAGE_SIZE).get_page(request.GET.get("page"))
    return render(request, "classifier/specimens/job_list.html", {"jobs": page.object_list, "page_obj": page})
