"""Portal pages. Parse input, call one service or selector, render."""

from django.views.generic import TemplateView

from . import selectors


class DashboardView(TemplateView):
    template_name = "classifier/dashboard.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["stats"] = selectors.dashboard_stats(user=self.request.user)
        return context
