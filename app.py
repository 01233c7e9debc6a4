"""MedPEFT Gradio app: classify medical images with PEFT adapters, fine-tune one in the browser,
generate chest X-rays from report text, and compare PEFT methods against Dutt et al. 2024.

    python app.py [--adapters-dir runs] [--host 127.0.0.1] [--port 7860] [--share] [--public]

The Hugging Face Space's entry point; the app itself is the ``ui`` package (settings from the
environment: see ``ui/settings.py``). Research use only: not a medical device.
"""
from ui import Settings, build_app, launch, main

__all__ = ["Settings", "build_app", "launch", "main"]

if __name__ == "__main__":
    main()
