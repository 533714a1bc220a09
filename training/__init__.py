"""Training of Keras .h5 orca-call detectors (and registered PyTorch models) in PyTorch, as the
original /train did it: the loop, the labeled data, augmentation, the optimizer and loss from the
model file, training precision, evaluation and TensorBoard logs. No HTTP, no S3: the service
downloads data to local folders and calls these.

- `training.loop.train(model_h5, labeled_dir, rows, cols, epochs, out_h5)` → TrainResult
  (`to_response()` is the original JSON less model_url);
- `training.evaluate.evaluate_folder(...)`: a model on a labeled folder.

Scoring (ONNX Runtime and torch, image decoding, the pixel cache) is the `scoring` package; query
strategies and the simulation are `active_learning`. Importing this package imports nothing.
"""
