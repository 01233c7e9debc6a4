"""What the app's Train tab runs, testable without Gradio: upload checks, the training session
queue with Stop, quick HPO. May import the rest of ``trainer`` and ``adapters``; never Gradio."""
