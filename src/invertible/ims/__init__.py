"""Imaging mass spectrometry (thesis chapter 7): imzML reading, preprocessing, isotope-pattern design,
IsotopeNet / ResidualNet, the ROC/LDA baseline, TMA-level cross-validation and a synthetic TMA generator.

Typical use::

    from invertible import ims
    ds = ims.load_dataset("measurement.imzML", "annotations.csv")       # x, y, core, tma, label
    folds = ims.tma_folds(ds.tma, n_folds=4, seed=0)
    run = ims.cross_validate_net(ds, folds, "isotopenet", ims.TRAIN_CONFIGS["adsq", "isotopenet"])
    print(run.spot, run.core)                                           # balanced accuracy per spot / core
"""

from invertible.ims.annotations import Annotations, align_annotations, read_annotations
from invertible.ims.baseline import DEFAULT_KS, ROCLDA, mann_whitney_auc, roc_lda_predict
from invertible.ims.evaluate import (
    CVRun,
    IMSDataset,
    MethodResult,
    balanced_accuracy,
    core_vote,
    cross_validate_net,
    cross_validate_roc_lda,
    fig7_5_table,
    load_dataset,
    method_metrics,
    summarize,
    tma_folds,
)
from invertible.ims.imzml import ImzMLData, index_imzml, read_imzml, resample
from invertible.ims.isotopes import (
    ISOTOPENET_CONVS,
    averagine_formula,
    isotope_pattern,
    pattern_bins,
    receptive_field,
    suggest_stride,
)
from invertible.ims.models import (
    IsotopeNet,
    LocallyConnected1d,
    ResidualLayer1d,
    ResidualNet,
    count_parameters,
    predict_proba,
)
from invertible.ims.plots import fig7_5_boxplot
from invertible.ims.preprocess import StdScaler, crop, remove_baseline, tic_normalize
from invertible.ims.synthetic import (
    PRESETS,
    SyntheticConfig,
    generate,
    preset,
    spectrum_statistics,
    tof_axis,
    write_imzml,
)
from invertible.ims.training import TRAIN_CONFIGS, IMSConfig, train_ims

__all__ = [
    "DEFAULT_KS", "ROCLDA", "mann_whitney_auc", "roc_lda_predict",
    "CVRun", "IMSDataset", "MethodResult", "balanced_accuracy", "core_vote", "cross_validate_net",
    "cross_validate_roc_lda", "fig7_5_boxplot", "fig7_5_table", "load_dataset", "method_metrics", "summarize",
    "tma_folds",
    "Annotations", "ImzMLData", "align_annotations", "index_imzml", "read_annotations", "read_imzml", "resample",
    "ISOTOPENET_CONVS", "averagine_formula", "isotope_pattern", "pattern_bins", "receptive_field",
    "suggest_stride",
    "TRAIN_CONFIGS", "IsotopeNet", "LocallyConnected1d", "ResidualLayer1d", "ResidualNet", "IMSConfig",
    "count_parameters", "predict_proba", "train_ims",
    "StdScaler", "crop", "remove_baseline", "tic_normalize",
    "PRESETS", "SyntheticConfig", "generate", "preset", "spectrum_statistics", "tof_axis", "write_imzml",
]
