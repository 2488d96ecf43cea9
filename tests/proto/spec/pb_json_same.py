"""What both JSON-mapping oracles (pb_json_oracle.py here, tests/client/dpoctl_json_oracle.py) share:
message classes from a descriptor set, and the comparison of two parsed JSON trees."""
import math

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory


def load_pool(desc_path):
    """A descriptor pool holding every file of the FileDescriptorSet at desc_path."""
    fds = descriptor_pb2.FileDescriptorSet()
    with open(desc_path, "rb") as f:
        fds.ParseFromString(f.read())
    pool = descriptor_pool.DescriptorPool()
    for fd in fds.file:
        pool.Add(fd)
    return pool


def message_class(pool, name):
    desc = pool.FindMessageTypeByName(name)
    try:
        return message_factory.GetMessageClass(desc)
    except AttributeError:  # protobuf before 4.22
        return message_factory.MessageFactory(pool).GetPrototype(desc)


def same(a, b):
    """Equal values with the fields in the same order; a number is a number whether written 1 or 1.0."""
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and \
            not isinstance(a, bool) and not isinstance(b, bool) and (a == b or (math.isnan(a) and math.isnan(b)))
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b
