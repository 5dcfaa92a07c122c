# The runs of benchmarks/README.md, "λ sets the robustness" (one thread each, 2-3 jobs side by side on the
# project's 2-core CPU). RUN is one of the folder names here; its overrides are in RUN/config.yaml.
molrecon train configs/mol_sn_2d.yaml --set model.lam=50 --set model.learn_lam=false \
    --set model.lipschitz_target=0.995 --set out_dir=runs/sn_lam50_L995      # = configs/mol_sn_2d.yaml since
molrecon train configs/mol_lr_2d.yaml --set model.lam=30 --set model.learn_lam=false \
    --set out_dir=runs/lr_lam30                                              # = configs/mol_lr_2d.yaml since
molrecon evaluate --checkpoint runs/RUN/best.pt --methods zero-filled --data builtin --out ev_RUN            # report.*
molrecon robustness --models runs/RUN/best.pt --parts attack --threads 1 --out rob_RUN                      # robustness.*
molrecon robustness --models runs/RUN/best.pt --parts attack --attack-steps 24 --attack-restarts 2 \
    --threads 1 --out robstrong_RUN                                                                          # strong-robustness.*
python tools/lipschitz_at_test.py runs/RUN/best.pt --out lipschitz_at_test.json                              # MOL-LR
molrecon robustness --models modl-2d-4x --parts attack [--attack-steps 24 --attack-restarts 2] --threads 1   # modl/
# 3D (sn3d_lamN, N = 30, 45, 60): the 3D MOL-SN with λ fixed, its test figures and its attack on the first test volume
molrecon train configs/mol_sn_3d.yaml --set model.lam=N --set model.learn_lam=false --set out_dir=runs/sn3d_lamN
molrecon evaluate --checkpoint runs/sn3d_lamN/best.pt --kind 3d --data builtin --methods zero-filled --out ev_sn3d_lamN
molrecon robustness --kind 3d --models runs/sn3d_lamN/best.pt --slices 1 --parts attack --threads 1 --out rob_sn3d_lamN
