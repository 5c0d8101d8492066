"""The K2ThinkDeployment controller: decide (pure), status (pure), and the reconcile that applies
the RayService and its supporting objects through the runtime's client."""
