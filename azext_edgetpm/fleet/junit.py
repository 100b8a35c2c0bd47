"""--junit-xml FILE: a fleet run as JUnit XML, for a CI's test results view (Azure Pipelines'
PublishTestResults@2 with testResultsFormat JUnit, Jenkins, GitLab).

One <testcase> per device: name = the host as written (and its IoT Hub device ID once known),
classname = the command (`edge-tpm.provision`), time = the device's seconds in this run; a failed
or interrupted device has a <failure> whose type is the step and whose message is the reason; a
device that never started (the run was stopped, or the failure budget was spent) is <skipped>.
"""
import os
import socket
import time
import xml.etree.ElementTree as ET


def write(path: str, command: str, rows, began_wall: float) -> None:
    failures = sum(1 for r in rows if r.failed and r.status != "notStarted")
    skipped = sum(1 for r in rows if r.status == "notStarted")
    total_time = f"{max((r.end for r in rows), default=0.0):.3f}"
    suites = ET.Element("testsuites", name=f"az edge-tpm {command}", tests=str(len(rows)),
                        failures=str(failures), errors="0", time=total_time)
    suite = ET.SubElement(suites, "testsuite", name=f"az edge-tpm {command}", tests=str(len(rows)),
                          failures=str(failures), errors="0", skipped=str(skipped), time=total_time,
                          timestamp=time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(began_wall)),
                          hostname=socket.gethostname())
    classname = "edge-tpm." + command.split(" ")[0]    # ("provision --dry-run": edge-tpm.provision)
    for row in rows:
        name = f"{row.name} (device {row.device_id})" if row.device_id else row.name
        case = ET.SubElement(suite, "testcase", name=name, classname=classname, time=f"{row.seconds:.3f}")
        message = " ".join(str(row.message or row.status).split())
        if row.status == "notStarted":
            ET.SubElement(case, "skipped", message=message)
        elif row.failed:
            failure = ET.SubElement(case, "failure", type=row.step or row.status,
                                    message=f"{row.step + ': ' if row.step else ''}{message}")
            failure.text = f"status: {row.status}\nstep: {row.step or '-'}\n{row.message or ''}"
        elif row.done_earlier:
            ET.SubElement(case, "system-out").text = "Done in an earlier run (--state); skipped."
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    partial = path + ".partial"
    ET.ElementTree(suites).write(partial, encoding="utf-8", xml_declaration=True)
    os.replace(partial, path)
