"""Studies over many runs: ASHA HPO, benchmark grids, reports, leaderboard rows, performance
measurement. May import ``trainer.loops``, ``trainer.data``, ``trainer.config`` and ``adapters``; never Gradio."""
