"""A Flower configuration file for a tiercel fleet (see :mod:`tiercel.workers.flower_view`).

Flower runs it in its own process::

    celery -A APP flower --conf="$(python -m tiercel.workers.flowerconfig)"

(the command prints this file's path). ``tiercel up`` starts Flower with it.
It shows tiercel's fields on cached tasks' pages and adds client hits to ``/metrics``.
"""

from tiercel.workers.flower_view import install

if __name__ == "__main__":
    print(__file__)
else:
    install()
