"""What every node family uses: the runtime (folders, device, dtype, limits), the model manager, the value
types that travel between nodes (handles, conditioning, latents) and shared widgets and checks."""
