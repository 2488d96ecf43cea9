from . import safe_open
def load_file(filename, device="cpu"):
    with safe_open(filename) as f:
        return {k: f.get_tensor(k) for k in f.keys()}
def save_file(*a, **k):
    raise RuntimeError("this verification reader does not write")
def load_model(*a, **k):
    raise RuntimeError("this verification reader does not load into models (accelerate names it)")
def storage_ptr(tensor):
    return tensor.untyped_storage().data_ptr() if hasattr(tensor, "untyped_storage") else tensor.storage().data_ptr()
def storage_size(tensor):
    s = tensor.untyped_storage() if hasattr(tensor, "untyped_storage") else tensor.storage()
    return s.nbytes() if hasattr(s, "nbytes") else s.size() * tensor.element_size()
