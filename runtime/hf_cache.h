// Models by Hugging Face hub id, from the local Hugging Face cache (no network): `--model
// org/name[@revision]` and a cache repo folder (`.../models--org--name[@revision]`) resolve to
// the snapshot directory the hub's own client laid out.
#pragma once
#include <string>

namespace phi3 {

// What `--model VALUE` names, as a checkpoint directory:
//  - a directory that holds config.json (or any directory that is not a cache repo folder):
//    VALUE itself (a path that exists always wins over a hub id);
//  - a cache repo folder (has refs/ or snapshots/, as models--Qwen--Qwen2.5-0.5B), optionally
//    followed by @REVISION: its snapshot of REVISION (default main);
//  - a hub id `org/name` or `name`, optionally @REVISION: the cache folder models--org--name
//    in the first of $HF_HUB_CACHE, $HUGGINGFACE_HUB_CACHE, $HF_HOME/hub,
//    $XDG_CACHE_HOME/huggingface/hub, ~/.cache/huggingface/hub that holds it; REVISION (default
//    main) is a refs/ name (its file holds a commit hash -> snapshots/<hash>), a commit hash, or
//    a prefix of one (7+ hex digits) naming one snapshot.
// Anything else is returned unchanged (the loader then names the missing directory). Throws,
// naming the id, every cache folder looked in and the command that fetches it, when an id
// `org/name` is in no cache, or the revision or its snapshot (with config.json) is missing.
std::string resolve_model_dir(const std::string& value);

}  // namespace phi3
