"""What a run leaves: Parquet tables and atomic writes (``tables``), checkpoints (``checkpoint``),
scores and the leaderboard (``scores``), plots (``plots``)."""
