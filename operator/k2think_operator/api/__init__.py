"""The API: the K2ThinkDeployment and K2ThinkModelCache models (the CRDs are generated from them),
their offline admission checks, and every name the operator shares with the cluster: API
coordinates, condition and event reasons, the model and GPU catalog, Kueue's contract."""
