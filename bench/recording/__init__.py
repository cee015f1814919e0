"""Recording and reporting: MLflow tracking, the store, reports, statistics, perf figures."""
