"""Commands that train nothing but report on what was trained: tables, figures, audits, heatmap checks, costs.

python -m reports.results --docs
"""
