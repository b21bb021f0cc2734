"""Ignite handlers of the bundle, one concern each (wired in ``configs/train.json`` and ``configs/inference.json``).

Training (``train#handlers``, in this order): ``teacher_init.TeacherFromStudent``, MONAI's ``LrScheduleHandler`` and
``ValidationHandler``, ``resume.ResumeTraining``, ``signals.StopOnSignal``, ``checkpoint.TrainingCheckpointSaver``,
``checkpoint.ModelExporter``, ``teacher_validation.TeacherValidation``, ``nan_guard.NonFiniteLossGuard``,
``run_log.RunLog``, ``progress.ProgressLogger``, MONAI's ``TensorBoardStatsHandler``. Validation
(``validate#handlers``): ``checkpoint.BestCheckpointSaver`` and ``run_log.ValidationLog``. Inference:
``inference_progress.InferenceProgress``; evaluation: ``evaluation.EvaluationHandler``. Multi-GPU:
``broadcast.BroadcastBuffers``.
"""
