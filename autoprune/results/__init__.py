"""What a finished study gives the user: one row per trial, the Pareto math, the report and the
export."""
