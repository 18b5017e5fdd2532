"""The model layer: the models the services serve and the tools train and measure - ranking
features and scorers, the interest model, the language model, the session signals. No gRPC
servicers here; services/ wraps these in processes, Triton's model repository (deploy/triton)
loads them, recmesh.tools trains and evaluates them."""
