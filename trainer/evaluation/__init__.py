"""Evaluation: generation through the family contract, NLG and clinical scoring, baselines, reports.

``evaluate.run_eval`` (``rrg eval``), ``generate`` (per-rank generation, ablations, the in-training
evaluator's loop), ``scoring`` / ``nlg`` / ``ptb`` (metrics with bootstrap intervals, COCO-toolkit
conventions), ``report_html`` (the self-contained HTML report), ``infer_files`` (``rrg generate`` on
image files), ``topic_scoring`` / ``topic_html`` (per-topic scores and rows for topic families).
"""
