"""DeepSynth's web app: a FastAPI JSON API over the library and a one-page UI.

- :func:`deepsynth.web.app.create_app` builds the app over a state folder from the routers in :mod:`deepsynth.web.routes`;
- :func:`deepsynth.web.server.serve` runs it with uvicorn (``deepsynth serve``);
- :mod:`deepsynth.web.jobs` runs each training job in its own process, state in SQLite (a package: requests,
  store, processes, supervisor, artifacts);
- :mod:`deepsynth.web.fields` generates the job request, the estimate request and the form's fields from
  the one field list of :mod:`deepsynth.training.boundary`;
- :mod:`deepsynth.web.datasets_store` keeps validated dataset uploads.

Nothing is imported here, so ``import deepsynth`` stays light.
"""
