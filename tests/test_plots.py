"""Figures built from the frames metrics.py returns: trace counts, data points, order, colours, empty frames."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from sklearn.metrics import roc_auc_score

from explorer.analysis import metrics, plots
from explorer.schema import VERDICT_LABELS

PAIRS = {
    "llava": ("llava", "base"),
    "llava-med": ("llava", "medical"),
    "gemma": ("gemma", "base"),
    "medgemma": ("gemma", "medical"),
}
# Deliberately not in the study's order: the figures must reorder them.
TASKS = ("histo_idc", "brain_tumor")
PROMPTS = ("normal_ow", "evidence", "abnormal", "mc_neg_first")


def answers(models=("llava", "llava-med"), tasks=TASKS, prompts=PROMPTS, n_cases=8, seed=0) -> pd.DataFrame:
    """An answers frame with every verdict kind, labels balanced, p_positive informative but noisy."""
    rng = np.random.default_rng(seed)
    rows = []
    for model in models:
        pair, role = PAIRS.get(model, (None, None))
        for task in tasks:
            for prompt in prompts:
                for c in range(n_cases):
                    label = "positive" if c % 2 else "negative"
                    verdict = rng.choice(VERDICT_LABELS, p=[0.35, 0.35, 0.1, 0.1, 0.1])
                    rows.append(
                        dict(
                            model=model,
                            task=task,
                            prompt_id=prompt,
                            prompt_family=prompt.removesuffix("_ow"),
                            case_id=f"{task}:{c}",
                            label=label,
                            verdict=str(verdict),
                            pair=pair,
                            role=role,
                            p_positive=float(
                                np.clip(0.5 + (0.2 if label == "positive" else -0.2) + rng.normal(0, 0.2), 0, 1)
                            ),
                            answer=f"<i>answer</i> {c}",
                        )
                    )
    return pd.DataFrame(rows)


def annotation_texts(fig: go.Figure) -> list[str]:
    return [a.text for a in fig.layout.annotations]


def is_empty_figure(fig: go.Figure, message: str = plots.EMPTY_MESSAGE) -> bool:
    return isinstance(fig, go.Figure) and len(fig.data) == 0 and message in annotation_texts(fig)


# ---------------------------------------------------------------- order and colours
def test_task_and_prompt_order_follow_the_study():
    assert plots.task_order(["histo_idc", "zzz", "brain_tumor", "pneumonia", "skin_cancer"]) == [
        "brain_tumor",
        "pneumonia",
        "skin_cancer",
        "histo_idc",
        "zzz",
    ]
    shuffled = [
        "mc_neg_first_ow",
        "custom_ab12",
        "abnormal_ow",
        "guided",
        "normal",
        "mc_pos_first",
        "abnormal",
        "evidence",
        "mc_neg_first",
        "normal_ow",
    ]
    assert plots.prompt_order(shuffled) == [
        "abnormal",
        "normal",
        "evidence",
        "guided",
        "mc_pos_first",
        "mc_neg_first",
        "abnormal_ow",
        "normal_ow",
        "mc_neg_first_ow",
        "custom_ab12",
    ]
    assert plots.prompt_label("normal_ow") == "Is it normal? (one word)"
    assert plots.prompt_label("custom_ab12") == "custom_ab12"


def test_verdict_colours_cover_every_verdict_and_match_the_stylesheet():
    assert set(plots.VERDICT_COLOURS) == set(VERDICT_LABELS) == set(plots.VERDICT_BG_COLOURS)
    assert len(set(plots.VERDICT_SYMBOLS.values())) == len(plots.VERDICT_SYMBOLS)  # each verdict its own marker
    css = (Path(__file__).resolve().parents[1] / "assets" / "explorer.css").read_text(encoding="utf-8")
    for verdict, colour in plots.VERDICT_COLOURS.items():
        assert re.search(rf"--vx-{verdict}:\s*{colour}\b", css, re.I), verdict
        assert re.search(rf"--vx-{verdict}-bg:\s*{plots.VERDICT_BG_COLOURS[verdict]}\b", css, re.I), verdict


def test_model_styles_order_pairs_base_first_and_colour_by_role():
    frame = answers(models=("other-model", "medgemma", "llava-med", "gemma", "llava"))
    styles = plots.model_styles(frame)
    # Pairs in the catalog's order (llava first), base before medical, unpaired models last.
    assert list(styles) == ["llava", "llava-med", "gemma", "medgemma", "other-model"]
    assert styles["llava"].colour in plots.ROLE_COLOURS["base"]
    assert styles["medgemma"].colour in plots.ROLE_COLOURS["medical"]
    assert styles["llava"].colour != styles["gemma"].colour  # pairs told apart by shade
    assert styles["other-model"].role is None and styles["other-model"].colour in plots.OTHER_COLOURS
    assert styles["medgemma"].name == "MedGemma 4B it"


# ---------------------------------------------------------------- the headline figure
def test_headline_f1_one_bar_trace_per_model_in_task_order_with_ci():
    frame = answers(models=("medgemma", "gemma", "llava", "llava-med"))
    table = metrics.headline(frame, n_boot=50)
    fig = plots.headline_f1(table)
    assert [t.type for t in fig.data] == ["bar"] * 4
    assert [t.name.split(" · ")[1] for t in fig.data] == ["base", "medical", "base", "medical"]
    order = fig.layout.xaxis.categoryarray
    assert order[0].startswith("Brain MRI") and order[1].startswith("Breast histopathology")
    for trace in fig.data:
        alias = trace.offsetgroup
        rows = table[table["model"] == alias].set_index("task").loc[["brain_tumor", "histo_idc"]]
        assert list(trace.x) == list(order)
        np.testing.assert_allclose(trace.y, rows["f1_all_mean"].to_numpy(dtype=float))
        np.testing.assert_allclose(trace.error_y.array, (rows["f1_all_hi"] - rows["f1_all_mean"]).to_numpy(dtype=float))
        np.testing.assert_allclose(
            trace.error_y.arrayminus, (rows["f1_all_mean"] - rows["f1_all_lo"]).to_numpy(dtype=float)
        )
    chance = [s for s in fig.layout.shapes if s.y0 == plots.CHANCE == s.y1]
    assert len(chance) == 1 and chance[0].line.dash == "dash"
    json.loads(fig.to_json())  # serialisable for the browser


def test_headline_f1_leaves_a_gap_for_an_undefined_value():
    table = metrics.headline(answers(), n_boot=0)
    table.loc[0, ["f1_all_mean", "f1_all_lo", "f1_all_hi"]] = np.nan
    fig = plots.headline_f1(table)
    assert None in fig.data[0].y
    json.loads(fig.to_json())


# ---------------------------------------------------------------- model x task views
def test_refusal_heatmap_from_cells_and_from_summary_agree():
    frame = answers()
    cells = metrics.cell_metrics(frame, n_boot=0)
    summary = metrics.model_task_summary(frame, n_boot=0, cells=cells)
    by_cells, by_summary = plots.refusal_heatmap(cells), plots.refusal_heatmap(summary)
    for fig in (by_cells, by_summary):
        assert len(fig.data) == 1 and fig.data[0].type == "heatmap"
        assert np.asarray(fig.data[0].z, dtype=float).shape == (2, 2)  # models x tasks
    np.testing.assert_allclose(
        np.asarray(by_cells.data[0].z, dtype=float), np.asarray(by_summary.data[0].z, dtype=float)
    )
    expected = summary.set_index(["model", "task"])["refusal_rate_mean"]
    assert by_cells.data[0].z[0][0] == pytest.approx(expected[("llava", "brain_tumor")])
    assert by_cells.data[0].z[1][1] == pytest.approx(expected[("llava-med", "histo_idc")])


def test_accuracy_by_prompt_one_task_rows_in_study_order_and_annotated():
    cells = metrics.cell_metrics(answers(), n_boot=0)
    fig = plots.accuracy_by_prompt(cells, task="histo_idc")
    assert len(fig.data) == 1
    heat = fig.data[0]
    assert list(heat.y) == [plots.prompt_label(p) for p in ("abnormal", "evidence", "mc_neg_first", "normal_ow")]
    z = np.asarray(heat.z, dtype=float)
    assert z.shape == (4, 2)  # prompts x models
    acc = cells.set_index(["task", "prompt_id", "model"])["accuracy"]
    assert z[3, 1] == pytest.approx(acc[("histo_idc", "normal_ow", "llava-med")])
    assert heat.text[0][0] == f"{100 * acc[('histo_idc', 'abnormal', 'llava')]:.0f}%"
    assert heat.texttemplate == "%{text}"
    assert not fig.layout.updatemenus  # one task: no menu


def test_accuracy_by_prompt_all_tasks_is_one_trace_per_task_behind_a_menu():
    cells = metrics.cell_metrics(answers(), n_boot=0)
    fig = plots.accuracy_by_prompt(cells)
    assert len(fig.data) == 2
    assert [t.visible for t in fig.data] == [True, False]
    buttons = fig.layout.updatemenus[0].buttons
    assert [b.label for b in buttons] == ["Brain MRI (tumor)", "Breast histopathology (IDC)"]
    assert buttons[1].args[0]["visible"] == [False, True]
    missing = plots.accuracy_by_prompt(cells, task="pneumonia")
    assert len(missing.data) == 0 and "No results for Chest X-ray (pneumonia)" in annotation_texts(missing)[0]


def test_flip_rate_bars_per_model_with_the_summary_values():
    frame = answers()
    summary = metrics.model_task_summary(frame, n_boot=0)
    fig = plots.flip_rate(summary)
    assert len(fig.data) == 2 and all(t.type == "bar" for t in fig.data)
    llava = fig.data[0]
    expected = summary.set_index(["model", "task"])["flip_rate"]
    assert list(llava.y) == pytest.approx([expected[("llava", "brain_tumor")], expected[("llava", "histo_idc")]])


def test_prompt_spread_one_box_per_model_one_point_per_defined_cell():
    cells = metrics.cell_metrics(answers(), n_boot=0)
    cells.loc[0, "accuracy"] = np.nan  # a cell where every answer was a refusal: no point
    fig = plots.prompt_spread(cells)
    assert len(fig.data) == 2 and all(t.type == "box" and t.boxpoints == "all" for t in fig.data)
    assert sum(len(t.y) for t in fig.data) == int(cells["accuracy"].notna().sum()) == len(cells) - 1
    assert set(fig.data[0].customdata) <= {plots.prompt_label(p) for p in PROMPTS}


# ---------------------------------------------------------------- ROC
def test_roc_curves_one_line_per_model_with_auc_and_a_menu_per_task():
    frame = answers()
    fig = plots.roc_curves(frame)
    assert len(fig.data) == 4  # 2 tasks x 2 models
    assert [t.visible for t in fig.data] == [True, True, False, False]
    rows = frame[(frame["task"] == "brain_tumor") & (frame["model"] == "llava")]
    auc = roc_auc_score(rows["label"] == "positive", rows["p_positive"])
    assert f"(AUC {auc:.2f})" in fig.data[0].name
    assert fig.data[0].x[0] == 0 and fig.data[0].x[-1] == 1
    one = plots.roc_curves(frame, task="histo_idc", prompt_id="evidence")
    assert len(one.data) == 2 and not one.layout.updatemenus


def test_roc_curves_without_probabilities_say_so():
    frame = answers().drop(columns="p_positive")
    fig = plots.roc_curves(frame)
    assert len(fig.data) == 0 and "p(positive)" in annotation_texts(fig)[0]
    nan_probs = plots.roc_curves(answers().assign(p_positive=np.nan))
    assert len(nan_probs.data) == 0


# ---------------------------------------------------------------- t-SNE and the variant grid
def test_tsne_scatter_colour_by_label_symbol_by_verdict_every_point_once():
    rng = np.random.default_rng(1)
    frame = answers(prompts=("evidence",), tasks=("brain_tumor",))
    points = frame.assign(x=rng.normal(size=len(frame)), y=rng.normal(size=len(frame)))
    fig = plots.tsne_scatter(points)
    combos = points.groupby(["model", "label", "verdict"]).size()
    assert len(fig.data) == len(combos)
    assert sum(len(t.x) for t in fig.data) == len(points)
    for trace in fig.data:
        label = "positive" if trace.name.startswith("tumor") else "negative"
        verdict = trace.name.split("said ")[1]
        assert trace.marker.color == plots.LABEL_COLOURS[label]
        assert trace.marker.symbol == plots.VERDICT_SYMBOLS[verdict]
    assert [b.label.split(" · ")[0] for b in fig.layout.updatemenus[0].buttons] == [
        "LLaVA-1.6 Mistral 7B",
        "LLaVA-Med v1.5 Mistral 7B",
    ]
    first_model = [t.visible for t in fig.data]
    assert sum(first_model) == len(points[points["model"] == "llava"].groupby(["label", "verdict"]))
    hover = fig.data[0].customdata[0]
    assert hover[0].startswith("brain_tumor:") and "&lt;i&gt;" in hover[3]  # answer text escaped


def test_tsne_scatter_without_verdicts_is_one_trace_per_class():
    # pandas' string dtype: a missing label is pd.NA, which has no truth value.
    points = pd.DataFrame(
        dict(
            x=[0.0, 1, 2, 3, 4],
            y=[1.0, 0, 1, 0, 2],
            model="llava",
            case_id=list("abcde"),
            label=pd.array(["positive", "negative", "positive", None, "negative"], dtype="string"),
        )
    )
    fig = plots.tsne_scatter(points)
    assert [len(t.x) for t in fig.data] == [2, 2, 1]  # negative, positive, unknown
    assert {t.marker.symbol for t in fig.data} == {plots.VERDICT_SYMBOLS[None]}
    # hover_html (already escaped, every answer on that image) is shown whole, not cut to a snippet.
    lines = "<br>".join(f"p{i}: <b>negative</b> · {'long answer ' * 5}" for i in range(12))
    fig = plots.tsne_scatter(points.assign(hover_html=lines))
    assert fig.data[0].customdata[0][3] == lines and "<br><br>%{customdata[3]}" in fig.data[0].hovertemplate


def test_verdict_grid_marks_only_answered_cells_of_a_labelled_image():
    grid = pd.DataFrame(
        [
            dict(prompt_id="normal", model="llava", verdict="negative", label="positive", answer="Yes, normal."),
            dict(prompt_id="abnormal", model="llava", verdict="positive", label="positive", answer="Yes."),
            dict(prompt_id="abnormal", model="llava-med", verdict="refusal", label="positive", answer="I cannot."),
            dict(prompt_id="normal", model="llava-med", verdict="hedge", label="positive", answer="Maybe."),
        ]
    )
    fig = plots.verdict_grid(grid)
    assert len(fig.data) == 1
    heat = fig.data[0]
    assert list(heat.y) == ["Is it abnormal?", "Is it normal?"]
    assert [list(r) for r in heat.text] == [["positive ✓", "refusal"], ["negative ✗", "hedge"]]
    codes = plots.VERDICT_CODES
    assert [list(r) for r in heat.z] == [[codes["positive"], codes["refusal"]], [codes["negative"], codes["hedge"]]]
    # The stepped colour scale paints each code with that verdict's background colour.
    n = len(codes)
    assert heat.zmin == -0.5 and heat.zmax == n - 0.5
    for verdict, code in codes.items():
        expected = plots.VERDICT_BG_COLOURS.get(verdict, plots.ERROR_BG_COLOUR)
        (lo, c_lo), (hi, c_hi) = heat.colorscale[2 * code], heat.colorscale[2 * code + 1]
        assert (lo, hi) == pytest.approx((code / n, (code + 1) / n)) and c_lo == c_hi == expected
    unlabelled = plots.verdict_grid(grid.assign(label=None))
    assert all("✓" not in t and "✗" not in t for row in unlabelled.data[0].text for t in row)


# ---------------------------------------------------------------- empty frames and bad input
@pytest.mark.parametrize(
    "build",
    [
        plots.headline_f1,
        plots.refusal_heatmap,
        plots.accuracy_by_prompt,
        plots.flip_rate,
        plots.prompt_spread,
        plots.roc_curves,
        plots.tsne_scatter,
    ],
)
@pytest.mark.parametrize("frame", [None, pd.DataFrame(), pd.DataFrame(columns=metrics.CELL_COLUMNS)])
def test_empty_frames_give_a_figure_with_the_message(build, frame):
    fig = build(frame)
    assert is_empty_figure(fig)
    assert fig.layout.title.text  # still says what it will show


def test_empty_results_from_metrics_give_empty_figures():
    empty = metrics.cell_metrics(pd.DataFrame())
    assert is_empty_figure(plots.accuracy_by_prompt(empty))
    assert is_empty_figure(plots.headline_f1(metrics.headline(pd.DataFrame())))
    assert is_empty_figure(plots.flip_rate(metrics.model_task_summary(pd.DataFrame())))
    assert is_empty_figure(plots.verdict_grid(pd.DataFrame()), "No answers yet — run the grid")


def test_a_frame_without_the_needed_columns_is_an_error_not_a_blank():
    with pytest.raises(ValueError, match="accuracy"):
        plots.accuracy_by_prompt(pd.DataFrame({"model": ["m"], "task": ["t"], "prompt_id": ["p"]}))


def test_study_figures_for_answers_and_for_nothing():
    figures = plots.study_figures(answers(), n_boot=20)
    assert len(figures) == 6 and all(isinstance(f, go.Figure) for f in figures)
    assert [len(f.data) for f in figures] == [2, 2, 2, 1, 2, 4]
    assert all(f.layout.height == plots.HEIGHT for f in figures)
    assert all(is_empty_figure(f) for f in plots.study_figures(pd.DataFrame()))
