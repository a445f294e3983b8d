"""A live worker and the model stepped together, one step at a time: the engine of the
differential random tests (tests/test_differential.py) and of anything that explores
experiments interactively.

    s = Session(profile)
    live, model, diffs = s.step("mmap", as_="a", length="2 pages", prot="rw", flags=["private", "anonymous"])
    s.close()                        # always: kills the workers, removes every object

Each step is validated with the whole experiment so far (spec.ExperimentBuilder), run live
(manager.Manager.take_step) and in the model (predict.model_step), and the two normalised step
records are compared field by field. `toml()` gives the experiment so far as a file."""
from __future__ import annotations

from model.resolve import Names
from shmkit import damon, manager, record, spec
from shmkit.compare import damon_not_compared, differences
from shmkit.predict import model_step, snapshot_from_record


class Session:
    def __init__(self, profile: dict, about: str = "differential session", **setup):
        from model.kernel import Kernel

        self.builder = spec.ExperimentBuilder(about=about, **setup)
        probe = spec.ExperimentBuilder(about=about, **setup).memfd(as_="_x", name="x").build()
        from shmkit.observe import zero_page_pfn

        self.m = manager.Manager(probe, zero_pfn=zero_page_pfn())
        manager.become_subreaper()
        self.live = self.pred = None
        try:
            self.m.open()
            self.m.spawn_main()
            initial = {"processes": self.m.observe(), **self.m.system()}
            self.live = record.experiment_record(probe, self.m.run, path="<session>", initial=initial,
                                                 pads={"main": self.m.procs["main"].pads})
            self.live["isolation"].update(self.m.ns)
            self.names = Names(self.m.run)
            self.kernel = Kernel(profile, snapshot_from_record(self.live, profile, str(self.m.run.dir.parent)))
            self.pred = dict(self.live, steps=[], initial=self.kernel.observe())
        except BaseException:
            self.close()
            raise

    def step(self, do: str, **fields):
        """Run one step live and in the model. Returns (live step, model step, differences)
        of the normalised records; raises spec.SpecError for an invalid step."""
        self.builder.step(do, **fields)
        try:
            exp = self.builder.build()
        except spec.SpecError:
            self.builder.steps.pop()
            raise
        st = exp.steps[-1]
        with damon.Watch() as watch:
            self.live["steps"].append(self.m.take_step(st))
        # smaps Referenced is not compared while DAMON samples physical memory
        # (model/known_differences.py "damon-accessed-bits")
        skip = damon_not_compared(watch.clearers())
        self.live["names"] = self.m.names()
        self.pred["steps"].append(model_step(self.kernel, self.names, st)[0])
        self.pred["names"] = self.names.record()
        nl, nm = record.normalise(self.live), record.normalise(self.pred)
        return nl["steps"][-1], nm["steps"][-1], differences({"steps": nl["steps"][-1:]},
                                                             {"steps": nm["steps"][-1:]}, skip)

    def perturbed(self) -> bool:
        return bool(self.live and self.live["steps"] and self.live["steps"][-1]["perturbed"])

    def toml(self) -> str:
        return self.builder.to_toml()

    def close(self) -> None:
        self.m.close()
