"""k2think-operator: K2 Think serving fleets on KubeRay RayService + Ray Serve LLM + vLLM."""

__version__ = "0.1.0"
