"""MedMNIST's own evaluation: ACC and AUC computed as `medmnist.Evaluator` does (medmnist/evaluator.py's getACC and
getAUC), per task type, so numbers compare with the MedMNIST tables.

| MedMNIST task                | mmfm kind  | ACC                                        | AUC                                   |
|------------------------------|------------|--------------------------------------------|---------------------------------------|
| multi-class                  | multiclass | argmax accuracy                            | mean over classes of one-vs-rest AUC  |
| ordinal-regression           | ordinal    | argmax accuracy (of P(y = k))              | mean over classes of one-vs-rest AUC  |
| binary-class                 | binary     | accuracy of score > 0.5                    | AUC of the positive-class score       |
| multi-label, binary-class    | multilabel | mean over labels of accuracy (score > 0.5) | mean over labels of AUC               |

`scores` are what mmfm.adapt.kinds.TaskKind.scores gives: (N, K) probabilities for multi-class and ordinal, (N,)
positive-class probability for binary (an (N, 2) array's last column is used, as MedMNIST does), (N, L) per-label
probabilities for multi-label.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
KIND_TO_TASK = {"multiclass": "multi-class", "ordinal": "ordinal-regression", "binary": "binary-class",
                "multilabel": "multi-label, binary-class"}


def medmnist_flag(name: str | os.PathLike) -> str | None:
    """The official MedMNIST data set a file or task is named after ('pathmnist', 'chestmnist_64.npz',
    'data/OrganAMNIST.npz' -> 'organamnist'), or None."""
    from ..data.medical import _flag_from_name, medmnist_info

    flag = _flag_from_name(Path(f"{os.fspath(name)}.npz" if not os.fspath(name).endswith(".npz") else name))
    return flag if flag in medmnist_info() else None


def _as_task(task: str) -> str:
    if task in KIND_TO_TASK:
        return KIND_TO_TASK[task]
    if task not in KIND_TO_TASK.values():
        raise ValueError(f"task {task!r}: use a MedMNIST task ({sorted(KIND_TO_TASK.values())}) or an mmfm kind "
                         f"({sorted(KIND_TO_TASK)})")
    return task


def _auc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """sklearn's AUC; NaN (logged) where a column holds one class only (MedMNIST's Evaluator would raise)."""
    from sklearn.metrics import roc_auc_score

    if len(np.unique(y_true)) < 2:
        log.warning("AUC undefined: the labels hold one class only; reported as NaN")
        return float("nan")
    return float(roc_auc_score(y_true, y_score))


def _column(a: np.ndarray) -> np.ndarray:
    """(N, 1) -> (N,) (MedMNIST squeezes; this keeps N = 1 intact)."""
    return a[:, 0] if a.ndim == 2 and a.shape[1] == 1 else a


def medmnist_metrics(task: str, y_true, y_score, threshold: float = 0.5) -> dict[str, float]:
    """{"acc", "auc"} as MedMNIST's getACC / getAUC. `task`: MedMNIST's task string or mmfm's kind; `y_true`:
    (N,) or (N, 1) labels, (N, L) multi-hot for multi-label; `y_score` as described in the module docstring."""
    task = _as_task(task)
    y_true, y_score = _column(np.asarray(y_true)), _column(np.asarray(y_score, dtype=np.float64))
    if len(y_true) != len(y_score):
        raise ValueError(f"y_true has {len(y_true)} rows, y_score {len(y_score)}")
    if task == "multi-label, binary-class":
        pred = y_score > threshold
        acc = np.mean([np.mean(y_true[:, i] == pred[:, i]) for i in range(y_true.shape[1])])
        auc = np.mean([_auc(y_true[:, i], y_score[:, i]) for i in range(y_score.shape[1])])
    elif task == "binary-class":
        score = y_score[:, -1] if y_score.ndim == 2 else y_score
        acc = np.mean(y_true == (score > threshold))
        auc = _auc(y_true, score)
    else:  # multi-class and ordinal-regression
        acc = np.mean(y_true == y_score.argmax(-1))
        auc = np.mean([_auc((y_true == i).astype(float), y_score[:, i]) for i in range(y_score.shape[1])])
    return {"acc": float(acc), "auc": float(auc)}
