"""The page of a comparison of registered deployments on an eval set (Markdown and self-contained HTML):
the accuracy table with Wilson intervals and the paired tests, a per-class bar chart, the images on which
two deployments disagree, latency and throughput side by side — every number with its provenance
(deployment identity, eval-set digest, time)."""

from __future__ import annotations

from typing import Any

from versus.gateway.v1 import gateway_pb2

from services.gateway.pages import charts


def per_class_svg(report: gateway_pb2.EvalReport) -> str:
    """Grouped bars: per-class top-1 accuracy of each deployment, with its 95% interval as an error bar."""
    rows = [d for d in report.deployments if d.per_class]
    labels = sorted({p.label for d in rows for p in d.per_class})
    with charts._figure(7.5, 3.2, "perclass") as (fig, ax):
        if not rows:
            charts._empty(ax, "No per-class accuracy (no deployment was measured)")
            return charts._to_svg(fig, "perclass")
        width = 0.8 / len(rows)
        for k, d in enumerate(rows):
            by_label = {p.label: p for p in d.per_class}
            xs = [i + (k - (len(rows) - 1) / 2) * width for i in range(len(labels))]
            values = [by_label[lab].hits / by_label[lab].images if lab in by_label and by_label[lab].images else 0
                      for lab in labels]
            low = [v - (by_label[lab].ci_low if lab in by_label else 0) for v, lab in zip(values, labels, strict=True)]
            high = [(by_label[lab].ci_high if lab in by_label else 0) - v for v, lab in zip(values, labels,
                                                                                         strict=True)]
            ax.bar(xs, values, width=width, color=charts.PALETTE[k % len(charts.PALETTE)], label=d.deployment.id,
                   yerr=[low, high], error_kw={"elinewidth": 0.8, "capsize": 1.5})
        ax.set_xticks(range(len(labels)), [lab[:14] for lab in labels], rotation=45 if len(labels) > 12 else 0)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("top-1 accuracy")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        ax.set_title(f"Per-class top-1 accuracy on {report.eval_set.name} (bars: Wilson 95% intervals)",
                     fontsize=9, loc="left")
        return charts._to_svg(fig, "perclass")


def context(c: gateway_pb2.Comparison) -> dict[str, Any]:
    per_class = {d.deployment.id: {p.label: p for p in d.per_class} for d in c.eval.deployments}
    return {"c": c, "e": c.eval, "title": " vs ".join(c.model_ids) + f" on {c.eval.eval_set.name}",
            "classes": sorted({label for table in per_class.values() for label in table}), "per_class": per_class}


def render_markdown(c: gateway_pb2.Comparison) -> str:
    from services.gateway.pages.render import environment

    return environment().get_template("eval.md.j2").render(context(c))


def render_html(c: gateway_pb2.Comparison, *, links: bool = False) -> str:
    from services.gateway.pages.render import environment

    ctx = context(c)
    ctx.update(per_class_svg=per_class_svg(c.eval), links=links)
    return environment().get_template("eval.html.j2").render(ctx)
