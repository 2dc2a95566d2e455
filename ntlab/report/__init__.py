"""Figures (pure functions: DataFrame → matplotlib Figure) and, later, the HTML report."""
