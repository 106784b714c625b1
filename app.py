"""medseg web app: drop an endoscopy image, get the lesion outlined, its area and a confidence map.

    python app.py            # http://127.0.0.1:7860 (the Hugging Face Space runs this file); the same as medseg-app

The tabs and their handlers are in ``medseg_core/webapp.py``, so that the installed ``medseg-app`` command serves
the same page.
"""

from medseg_core.webapp import build_demo, launch

demo = build_demo()

if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.INFO)
    launch(demo)
