"""Quick HPO for the Train tab: a few short optuna trials (``trainer.study.hpo``'s objective, TPE
sampler, ASHA pruning, ``HPO_TRIAL_EPOCHS`` epochs each, in a scratch folder), then the final
training with the best configuration into the run folder."""
from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

from ..data import DataError
from .progress import HPO_TRIAL_EPOCHS
from .runs import read_results, write_results
from .session import TrainingJob


class QuickHPOJob(TrainingJob):
    """Events are the plain job's plus ``trial``/``trial_done``/``final``. ``stop()`` during the trials
    ends the current trial (its best checkpoint is tested) and keeps the best completed trial as the
    run. The run's results.json gains ``quick_hpo``: the trials, the best and the epochs per trial."""

    def __init__(self, cfg, trials: int, scratch: str | os.PathLike, trial_epochs: int = HPO_TRIAL_EPOCHS):
        super().__init__(cfg)
        self.trials = int(trials)
        self.trial_epochs = int(trial_epochs)
        self.scratch = Path(scratch)

    def _run(self) -> None:
        import optuna

        from ..loops.classify import run
        from ..study import hpo

        put = self.put
        try:
            base = copy.deepcopy(self.cfg)
            base.epochs = max(1, min(self.cfg.epochs, self.trial_epochs))
            done: list[dict] = []
            counter = {"n": 0}

            def train(cfg, report):
                counter["n"] += 1
                n = counter["n"]
                if self.stopped:  # stopped between trials: no new trial (the study stops after this one)
                    raise optuna.TrialPruned("stopped by the user")
                put({"kind": "trial", "trial": n, "trials": self.trials, "epochs": cfg.epochs, "lr": cfg.lr,
                     "weight_decay": cfg.weight_decay, "hparams": dict(cfg.hparams)})
                try:
                    results = run(cfg, report=report, progress=lambda e: put({**e, "trial": n}), stop=self._stop)
                except optuna.TrialPruned:
                    put({"kind": "trial_done", "trial": n, "pruned": True})
                    raise
                val = results["metrics"]["val"][results["headline"]]["mean"]
                done.append({"trial": n, "lr": cfg.lr, "weight_decay": cfg.weight_decay, "hparams": dict(cfg.hparams),
                             "val": val, "output_dir": cfg.output_dir})
                put({"kind": "trial_done", "trial": n, "pruned": False, "val": val})
                return results

            optuna.logging.set_verbosity(optuna.logging.WARNING)
            study = hpo.make_study(f"quick-{self.cfg.method}", None, seed=0)
            # search_trial=False: a stopped quick HPO keeps its best trial as the run, so trials are tested
            study.optimize(hpo.objective_for(base, self.scratch, train, search_trial=False), n_trials=self.trials,
                           catch=(),
                           callbacks=[lambda st, _t: st.stop() if self.stopped else None])
            if not done:
                raise DataError("quick HPO: no trial completed (all were pruned or stopped)")
            best = max(done, key=lambda t: t["val"])
            summary = {"trials": [{k: v for k, v in t.items() if k != "output_dir"} for t in done],
                       "best": {k: v for k, v in best.items() if k != "output_dir"}, "trial_epochs": base.epochs}
            out = Path(self.cfg.output_dir)
            if self.stopped:  # keep the best trial so far as the run
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(best["output_dir"], out)
                results = read_results(out)
                results["stopped_early_by_user"] = True
            else:
                final = hpo.best_config(self.cfg, study)
                final.lr, final.weight_decay = best["lr"], best["weight_decay"]
                final.hparams = {**final.hparams, **best["hparams"]}
                put({"kind": "final", "lr": final.lr, "weight_decay": final.weight_decay,
                     "hparams": dict(final.hparams)})
                results = run(final, progress=lambda e: put({**e, "final": True}), stop=self._stop)
            results["quick_hpo"] = summary
            write_results(out, results)
            self.results = results
            put({"kind": "done", "results": results})
        except Exception as e:  # shown to the user as a message; the server keeps serving
            self.fail(e)
