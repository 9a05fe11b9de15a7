"""The report templates (Jinja2; kept in a module so the package needs no data files)."""

RESEARCH_NOTICE = "Research use only, not for diagnosis or clinical decisions."

#: The end of every report's provenance table: software versions, then the resolved recipe.
PROVENANCE_TAIL = r"""{% for k, v in versions.items() %}<tr><td>{{ k }}</td><td>{{ v }}</td></tr>{% endfor %}
</table>
<h3>Recipe (resolved)</h3>
<pre>{{ recipe_text }}</pre>
</body>
</html>
"""

REPORT_STYLE = r"""<style>
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1150px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: .86em; }
th, td { border: 1px solid #ddd; padding: .25em .55em; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
.warn { color: #b00; } .muted { color: #777; font-size: .85em; }
figure { display: inline-block; margin: .4em; vertical-align: top; }
figure img { max-width: 100%; } figcaption { font-size: .8em; color: #555; max-width: 260px; }
.gallery img { width: 220px; height: auto; border: 1px solid #ccc; }
pre { background: #f7f7f7; padding: .8em; overflow-x: auto; font-size: .8em; }
</style>
"""

# a point estimate with its 95 % interval (NaN / None: n/a)
EST_MACRO = r"""{% macro est(e) -%}
{%- if e is none -%}&ndash;{%- elif e.value is none or e.value != e.value -%}n/a{%- else -%}
{{ "%.3f"|format(e.value) }}{% if e.low is not none and e.low == e.low %} <span class="muted">({{ "%.3f"|format(e.low) }}&ndash;{{ "%.3f"|format(e.high) }})</span>{% endif %}
{%- endif -%}
{%- endmacro %}"""

REPORT_TEMPLATE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>cxrlab evaluation: {{ run_name }}</title>
""" + REPORT_STYLE + r"""
</head>
<body>
""" + EST_MACRO + r"""
<h1>Evaluation report &mdash; {{ run_name }}</h1>
<p>Headline split: <b>{{ m.eval_split }}</b>. Intervals are 95&nbsp;% percentile intervals of a patient-level
bootstrap ({{ m.n_boot }} resamples of patients, seed {{ m.seed }}). Generated {{ generated }}.</p>

<h2 id="data">Data summary</h2>
<table><tr><th>split</th><th>patients</th><th>images</th><th>sources</th>{% for t in targets %}<th>{{ t }} classes</th>{% endfor %}</tr>
{% for split, s in m.data_summary.items() %}
<tr><td>{{ split }}</td><td>{{ s.patients }}</td><td>{{ s.images }}</td>
<td>{% for src, v in (s.sources or {}).items() %}{{ src }}: {{ v.patients }} pt / {{ v.images }} img<br>{% endfor %}</td>
{% for t in targets %}<td>{% for c, n in (s.classes.get(t) or {}).items() %}{{ c }}: {{ n }}<br>{% endfor %}</td>{% endfor %}</tr>
{% endfor %}</table>

{% for name, t in m.targets.items() %}
<h2 id="target-{{ loop.index }}">{{ name }} <span class="muted">({{ t.kind }}, column <code>{{ t.column }}</code>)</span></h2>
{% if t.validation_threshold is defined %}<p>Operating point fixed on the validation split (Youden): p &ge; {{ "%.4f"|format(t.validation_threshold) }}.</p>{% endif %}
{% for split, r in t.splits.items() %}
<h3>{{ split }} &mdash; {{ r.n }} images{% if r.n_patients is defined %}, {{ r.n_patients }} patients{% endif %}</h3>
<table><tr><th>metric</th><th>value (95 % CI)</th></tr>
{% for k, e in r.metrics.items() %}{% if '[' not in k %}<tr><td>{{ k }}</td><td>{{ est(e) }}</td></tr>{% endif %}{% endfor %}
</table>
{% if t.kind in ('multiclass', 'ordinal') %}
<table><tr><th>class</th><th>support</th><th>precision</th><th>recall</th><th>F1</th>{% if t.kind == 'multiclass' %}<th>AUC (one-vs-rest)</th>{% endif %}</tr>
{% for c in t.classes %}{% set i = loop.index0 %}
<tr><td>{{ c }}</td><td>{{ r.support[i] }}</td><td>{{ est(r.metrics.get('precision[%d]'|format(i))) }}</td>
<td>{{ est(r.metrics.get('recall[%d]'|format(i))) }}</td><td>{{ est(r.metrics.get('f1[%d]'|format(i))) }}</td>
{% if t.kind == 'multiclass' %}<td>{{ est(r.metrics.get('auc[%d]'|format(i))) }}</td>{% endif %}</tr>
{% endfor %}</table>
{% endif %}
{% if t.kind == 'binary' and r.youden is defined %}
<table><tr><th>operating point</th><th>threshold</th><th>TP</th><th>FP</th><th>TN</th><th>FN</th><th>sensitivity</th><th>specificity</th><th>PPV</th><th>NPV</th></tr>
{% for op in ('youden', 'fixed') %}{% if r[op] is defined %}{% set o = r[op] %}
<tr><td>{{ op }}</td><td>{{ "%.4f"|format(o.threshold) }}</td><td>{{ o.tp }}</td><td>{{ o.fp }}</td><td>{{ o.tn }}</td><td>{{ o.fn }}</td>
<td>{{ "%.3f"|format(o.sensitivity) }}</td><td>{{ "%.3f"|format(o.specificity) }}</td><td>{{ "%.3f"|format(o.ppv) }}</td><td>{{ "%.3f"|format(o.npv) }}</td></tr>
{% endif %}{% endfor %}</table>
{% endif %}
{% for fig in figs.get((name, split), []) %}<figure><img alt="{{ fig.caption }}" src="data:image/png;base64,{{ fig.b64 }}"><figcaption>{{ fig.caption }}</figcaption></figure>{% endfor %}
{% endfor %}

{% if t.view_confound is defined and t.view_confound.model_auc is defined %}{% set vc = t.view_confound %}
<h3>View confound ({{ m.eval_split }}: {{ vc.n_images }} films, {{ vc.n_patients }} patients with a known view)</h3>
<table><tr><th></th><th>AUC (patient-level 95 % CI)</th></tr>
<tr><td>model, all films</td><td>{{ est(vc.model_auc) }}</td></tr>
<tr><td>view only (AP/supine = 1, PA = 0)</td><td>{{ est(vc.view_only_auc) }}</td></tr>
<tr><td>model minus view only (paired)</td><td>{{ est(vc.model_minus_view_auc) }}</td></tr>
{% for g, e in vc.within_view.items() %}<tr><td>model within {{ g }} films ({{ vc.views[g].images }} films, {{ vc.views[g].positives }} positive)</td><td>{{ est(e) }}</td></tr>{% endfor %}
</table>
{% endif %}
{% if t.subgroups %}
<h3>Subgroups ({{ m.eval_split }})</h3>
{% for col, rows in t.subgroups.items() %}
<table><tr><th>{{ col }}</th><th>images</th><th>patients</th>{% for k in subgroup_keys[t.kind] %}<th>{{ k }}</th>{% endfor %}<th>warning</th></tr>
{% for row in rows %}<tr><td>{{ row.level }}</td><td>{{ row.n_images }}</td><td>{{ row.n_patients }}</td>
{% for k in subgroup_keys[t.kind] %}<td>{{ est(row.get(k)) }}</td>{% endfor %}<td class="warn">{{ row.warning }}</td></tr>{% endfor %}
</table>
{% endfor %}
{% endif %}
{% endfor %}

{% if m.agreement %}
<h2 id="agreement">Reader agreement</h2>
<p>Model&ndash;reader pairs use the reader as reference; reader&ndash;reader pairs the first-named reader. The model
agrees with readers as well as they agree with each other when its rows match the reader&ndash;reader row.</p>
{% for task, a in m.agreement.items() %}
<h3>{{ task }} <span class="muted">({{ a.columns|join(', ') }} stacked)</span></h3>
<table><tr><th>reference</th><th>other</th><th>kind</th><th>n</th><th>MAE</th><th>quadratic &kappa;</th><th>macro-F1</th><th>R&sup2;</th></tr>
{% for r in a.rows %}<tr><td>{{ r.reference }}</td><td>{{ r.other }}</td><td>{{ r.kind }}</td><td>{{ r.n }}</td>
<td>{{ est(r.mae) }}</td><td>{{ est(r.kappa_quadratic) }}</td><td>{{ est(r.macro_f1) }}</td><td>{{ est(r.r2) }}</td></tr>{% endfor %}
</table>
{% if a.thresholds %}<p class="muted">Model probabilities as 0/1: {% for c, v in a.thresholds.items() %}{{ c }} &ge; {{ "%.3f"|format(v) }}{% if not loop.last %}, {% endif %}{% endfor %} (the validation operating point; 0.5 when there is none).</p>{% endif %}
{% endfor %}
{% endif %}

<h2 id="learning">Learning curves</h2>
{% if learning_curves %}<figure><img alt="learning curves" src="data:image/png;base64,{{ learning_curves }}"><figcaption>history.csv</figcaption></figure>
{% else %}<p class="muted">No history.csv in the run directory.</p>{% endif %}

<h2 id="explain">Heatmaps and Heatmap Concordance Score</h2>
{% if explain.error %}<p class="warn">Not available: {{ explain.error }}</p>{% else %}
<p>{{ explain.method }} heatmaps, probability-weighted over classes{% if explain.per_lung %}; one input per lung (HCS: mean of the two sides){% endif %}.
{% if explain.definition == "mass" %}HCS (mass) = share of the heatmap's mass at or above {{ explain.threshold }} of its peak that lies inside the lung mask
{%- else %}HCS ({{ explain.definition }}) = share of the heatmap's non-zero pixels that lie inside the lung mask (the opacity paper's definition){% endif %}
(chance level = the lungs' share of the model input). Macro = mean over classes.</p>
{% if explain.hcs_note %}<p class="warn">{{ explain.hcs_note }}</p>{% endif %}
{% for name, h in explain.hcs.items() %}
{% if h.heads|length > 1 %}<p class="muted">{{ name }}: heatmaps of {{ h.heads|join(' and ') }} averaged; images grouped by their highest grade.</p>{% endif %}
<table><tr><th>{{ name }}</th><th>images</th><th>mean HCS</th><th>mean lung fraction (chance)</th></tr>
{% for c, v in h.per_class.items() %}<tr><td>{{ c }}</td><td>{{ h.n[c] }}</td><td>{{ "%.3f"|format(v) }}</td><td>{{ "%.3f"|format(h.chance.get(c, 0)) }}</td></tr>{% endfor %}
<tr><th>macro</th><th>{{ h.n.values()|sum }}</th><th>{{ "%.3f"|format(h.macro) }}</th><th></th></tr></table>
{% endfor %}
{% for name, groups in explain.gallery.items() %}
<h3>Gallery: {{ name }}</h3>
{% for g in groups %}<div class="gallery"><b>true {{ g.true }} &mdash; {{ 'correct' if g.correct else 'wrong' }}</b><br>
{% for item in g["items"] %}<figure><img alt="{{ item.caption }}" src="data:image/png;base64,{{ item.b64 }}"><figcaption>{{ item.caption }}</figcaption></figure>{% endfor %}
{% if not g["items"] %}<span class="muted">no such case</span>{% endif %}</div>{% endfor %}
{% endfor %}
{% endif %}

<h2 id="provenance">Provenance</h2>
<table>
<tr><td>run directory</td><td>{{ run_dir }}</td></tr>
<tr><td>data fingerprint</td><td><code>{{ m.data_fingerprint }}</code></td></tr>
<tr><td>seed (training)</td><td>{{ training_seed }}</td></tr>
""" + PROVENANCE_TAIL

SEQUENCE_REPORT_TEMPLATE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>cxrlab sequence evaluation: {{ run_name }}</title>
""" + REPORT_STYLE + r"""
<style>.timeline img { max-width: 100%; border: 1px solid #ccc; } .timeline figcaption { max-width: 100%; }
.notice { border: 1px solid #b00; color: #b00; padding: .5em .8em; font-weight: 600; }</style>
</head>
<body>
""" + EST_MACRO + r"""
<h1>Sequence outcome report &mdash; {{ run_name }}</h1>
<p class="notice" id="notice">""" + RESEARCH_NOTICE + r""" Predictions from a patient's series of films by a
model trained on few patients; the intervals below say how little they can show.</p>
<p>Outcome: <b>{{ config.outcome.kind }}</b>
{% if config.outcome.kind == 'binary' %}(column <code>{{ config.outcome.column }}</code>{% if config.outcome.positive %}, positive = {{ config.outcome.positive|join(', ') }}{% endif %}; metric AUC).
{%- else %}(time <code>{{ config.outcome.time_column }}</code>, event <code>{{ config.outcome.event_column }}</code>; Cox head, Harrell's C-index).{% endif %}
{{ metrics.n_patients }} patients ({{ metrics.n_positive }} with the {{ 'outcome' if config.outcome.kind == 'binary' else 'event' }}),
films per patient median {{ "%g"|format(n_films.median()) }} / max {{ n_films.max() }}; patient-level stratified
{{ config.train.folds }}-fold cross-validation ({% for f, n in folds.items() %}fold {{ f }}: {{ n }}{% if not loop.last %}, {% endif %}{% endfor %} patients),
pooled out-of-fold predictions. Intervals are 95&nbsp;% percentile intervals of a patient bootstrap; differences are
paired (the same resamples). Generated {{ generated }}.</p>

<h2 id="metrics">{{ metrics.metric }} of the sequence model and its baselines</h2>
<table><tr><th>model</th><th>{{ metrics.metric }} (95 % CI)</th></tr>
{% for r in rows %}<tr><td>{{ r.name }} <span class="muted">({{ r.key }})</span></td><td>{{ est(r.e) }}</td></tr>{% endfor %}
</table>
{% if diffs %}<table><tr><th>paired difference</th><th>{{ metrics.metric }} difference (95 % CI)</th></tr>
{% for r in diffs %}<tr><td>{{ r.name }} <span class="muted">({{ r.key }})</span></td><td>{{ est(r.e) }}</td></tr>{% endfor %}
</table>
<p class="muted">A difference whose interval spans 0 is not distinguishable from chance on these patients.</p>{% endif %}

<h2 id="km">Kaplan&ndash;Meier curves by predicted risk group</h2>
{% if km.note %}<p class="warn">{{ km.note }}</p>{% endif %}
{% for fig in km.figures %}<figure class="km"><img alt="Kaplan-Meier curves" src="data:image/png;base64,{{ fig.b64 }}"><figcaption>{{ fig.caption }}</figcaption></figure>{% endfor %}

<h2 id="timelines">Patient timelines</h2>
{% if timelines.error %}<p class="warn">Not available: {{ timelines.error }}</p>{% endif %}
{% for t in timelines["items"] %}<figure class="timeline" id="patient-{{ t.patient_id }}"><img alt="timeline of patient {{ t.patient_id }}" src="data:image/png;base64,{{ t.b64 }}">
<figcaption>{{ t.caption }}</figcaption></figure>
<table class="timeline-values"><tr><th>day</th>{% for o in t.offsets %}<td>{{ "%g"|format(o) }}</td>{% endfor %}</tr>
<tr><th>{{ timelines.label }} after the film</th>{% for v in t.outputs %}<td>{{ "%.3f"|format(v) }}</td>{% endfor %}</tr></table>
{% endfor %}

<h2 id="provenance">Provenance</h2>
<table>
<tr><td>cv folder</td><td>{{ run_dir }}</td></tr>
<tr><td>embeddings</td><td>{{ emb or 'not named' }}</td></tr>
<tr><td>seed</td><td>{{ config.seed }}</td></tr>
""" + PROVENANCE_TAIL
