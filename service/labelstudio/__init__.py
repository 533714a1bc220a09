"""A Label Studio ML backend on the service's own work, mounted under `/labelstudio` of the same app
(`service.routes.labelstudio`).

- `labelconfig`: the project's label config, checked against the model's classes (stdlib XML);
- `client`: Label Studio's API (legacy tokens and personal access tokens) and the tasks' media;
- `backend`: the use cases, plain functions of a `Runtime`: health, setup, predict, versions, and
  training from a project's annotations through the service's job queue.

Nothing here knows Flask; the per-app state (what `/setup` told, the access tokens) lives on the
runtime (`Runtime.labelstudio`, a `client.LabelStudioState`).
"""
