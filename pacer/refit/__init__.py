"""refit: learn spend curves from the auction log (rollup SQL on DuckDB or Spark, then a numpy fit)."""
