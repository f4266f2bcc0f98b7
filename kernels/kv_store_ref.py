"""Plain-torch KV store: write new keys/values into their paged-cache slots."""
import torch


def store_kv(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Write token i's K/V into slot ``slot_mapping[i]`` of the paged cache, in place.

    k, v: [N, Hkv, D], cache dtype. k_cache, v_cache: [num_blocks, block_size, Hkv, D],
    contiguous. slot_mapping: int64 [N]; slot = block_id * block_size + offset_in_block,
    and a negative slot means "skip this token" (padding).
    """
    num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    keep = slot_mapping >= 0
    slots = slot_mapping[keep]
    k_flat = k_cache.view(-1, num_kv_heads, head_dim)
    v_flat = v_cache.view(-1, num_kv_heads, head_dim)
    k_flat.index_copy_(0, slots, k[keep].to(k_cache.dtype))
    v_flat.index_copy_(0, slots, v[keep].to(v_cache.dtype))
