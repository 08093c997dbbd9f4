# Tries to change its input (read-only unless --writable-inputs), then succeeds.
for f in /workspace/inputs/*_0000.nii.gz; do
  (echo tampered > "$f") 2>/dev/null && echo "input written" || echo "input is read-only"
  mkdir /workspace/inputs/tmpdir 2>/dev/null && echo "made a folder" || echo "no folder"
  cp "$f" "/workspace/outputs/$(basename "$f" _0000.nii.gz).nii.gz"
done
