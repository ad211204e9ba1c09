"""HTTP serving: `create_app(model, db)` -> a FastAPI app, with micro-batching, limits, metrics and a web page.

FastAPI is imported only when an app is created (pip install 'polymodal[serve]').
"""

from polymodal.serve.limits import ServeSettings


def create_app(model, db_path, api_key=None, settings=None, **kwargs):
    """See polymodal.serve.app.create_app (runtime, vqa_model, polymodal.load options)."""
    from polymodal.serve.app import create_app as _create_app

    return _create_app(model, db_path, api_key=api_key, settings=settings, **kwargs)


__all__ = ["ServeSettings", "create_app"]
