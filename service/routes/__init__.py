"""The HTTP layer: Flask blueprints, parameters in, JSON out. Each route declares its access policy
and its one-line description on its view (`service.routes.web.policy`, the docstring's first line);
the work is in the Flask-free use cases (`service.train`, `service.predict`, `service.selection`,
`service.ops`, `service.clips`), which the CLI and batch scoring call too.

    api        /, /health, /train, /predict        (service.routes.api)
    selection  /embed, /query                      (service.routes.selection)
    ops        /jobs…, /models, /ready, /metrics    (service.routes.ops)
    clips      /clips/<path>: local audio clips      (service.routes.clips)
"""
