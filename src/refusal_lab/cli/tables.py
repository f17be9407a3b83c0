"""What the CLI prints: rich tables of frames, selections and comparisons (wide enough for logs and pipes)."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console()
if not console.is_terminal:  # logs and pipes: rich assumes 80 columns, too narrow for the result tables
    console = Console(width=140)


def print_table(frame, title: str) -> None:
    table = Table(title=escape(title))
    for column in frame.columns:
        table.add_column(str(column), no_wrap=True)
    for row in frame.itertuples(index=False):
        table.add_row(*(f"{v:.3f}" if isinstance(v, float) else escape(str(v)) for v in row))
    console.print(table)


def report_selection(extraction) -> None:
    for (method, scope), selection in extraction.selections.items():
        c = selection.chosen
        if c is not None:
            where = f"k {c.k}" if c.layer is None else f"layer {c.layer}, position {c.position}"
            scale = "" if c.induce_scale != c.induce_scale or c.induce_scale == 1 else f" at scale {c.induce_scale:g}"
            console.print(escape(f"{method} [{scope}]: selected {where} (bypass {c.bypass:.2f}, induce {c.induce:.2f}"
                          f"{scale}, KL {c.kl:.3f})"))
            continue
        label = escape(f"{method} [{scope}]")
        console.print(f"[red]{label}: no candidate passed the filters (induce > threshold at every scale, KL < bar, "
                      "layer < 0.8L); closest candidates:")
        print_table(selection.table().head(8), f"{method} [{scope}]: closest candidates")


def print_comparison(result, title: str) -> None:
    frame = result.comparison
    main = frame[~frame["control"].astype(bool)]

    def rate(side):
        return [f"{r:.2f} [{lo:.2f}, {hi:.2f}]" for r, lo, hi in
                zip(main[f"refusal_{side}"], main[f"ci_low_{side}"], main[f"ci_high_{side}"])]

    import pandas as pd

    view = pd.DataFrame({"condition": main["name"], "harmful refusal [95% CI]": rate("harmful"),
                         "harmless refusal [95% CI]": rate("harmless"), "KL held-out": main["kl_harmless"],
                         "KL val": main["kl_val"]})
    if "landing_harmful_last" in main:
        view["last layer t harmful / harmless"] = [f"{a:.2f} / {b:.2f}" for a, b in
                                                   zip(main["landing_harmful_last"], main["landing_harmless_last"])]
    if "control_refusal_harmful" in main:
        view["control harmful / harmless"] = [f"{a:.2f} / {b:.2f}" if a == a else "—" for a, b in
                                              zip(main["control_refusal_harmful"], main["control_refusal_harmless"])]
    print_table(view, title)
    for note in result.skipped:
        console.print(f"[yellow]skipped {escape(note)}")
    console.print(f"tables: {result.out_dir}")


def print_findings(findings) -> None:
    """A study's findings, one row each: ``{model: [Finding]}``."""
    import pandas as pd

    print_table(pd.DataFrame([{"model": model, "finding": f.id, "verdict": f.label,
                               "n": "" if f.n is None else f.n,
                               "detectable": "" if f.detectable is None else f"±{f.detectable:.2f}",
                               "title": f.title[:60] + ("…" if len(f.title) > 60 else "")}
                              for model, found in findings.items() for f in found]), "findings")


def note(message: str) -> None:
    """One line on stderr, never wrapped (a deprecation, a hint): the results stay alone on stdout."""
    Console(stderr=True).print(message, markup=False, highlight=False, soft_wrap=True)
