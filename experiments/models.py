"""Experiments app models. Evidence tables live in models_evidence (written by serving/ingestion)."""

from experiments.models_evidence import Exposure, IngestBatch, MetricDefinition, MetricObservation

__all__ = ["Exposure", "IngestBatch", "MetricDefinition", "MetricObservation"]
