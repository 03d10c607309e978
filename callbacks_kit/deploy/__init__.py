"""Using a trained run: what it remembers (`run.json`), predict, evaluate and export, for either task."""

from callbacks_kit.deploy.evaluate import EvaluationReport, evaluate_run
from callbacks_kit.deploy.evaluate_segmentation import SegmentationEvaluation, evaluate_segmentation
from callbacks_kit.deploy.export import EXPORT_FORMATS, ExportResult, export_run
from callbacks_kit.deploy.predict import Prediction, predict
from callbacks_kit.deploy.predict_masks import MaskPrediction, MaskPredictionResult, predict_masks
from callbacks_kit.deploy.run_info import (
    RUN_INFO,
    RunInfo,
    WriteRunInfo,
    load_run_model,
    read_run_info,
    write_run_info,
)

__all__ = [
    "EXPORT_FORMATS",
    "RUN_INFO",
    "EvaluationReport",
    "ExportResult",
    "MaskPrediction",
    "MaskPredictionResult",
    "Prediction",
    "RunInfo",
    "SegmentationEvaluation",
    "WriteRunInfo",
    "evaluate_run",
    "evaluate_segmentation",
    "export_run",
    "load_run_model",
    "predict",
    "predict_masks",
    "read_run_info",
    "write_run_info",
]
