// onco-exercise's profiles: each is a PA IG profile (as published) plus only the rules below.
// Every rule carries a `// why:` comment; profiles/build.py compiles this file and docs/profiles.md lists
// the rules with their reasons. Anything the IG allows and is not named here, our profiles allow too.

Alias: $sct = http://snomed.info/sct

Invariant:   oe-rx-1
Description: "The performer of an exercise prescription, when stated, is the patient"
Expression:  "performer.all(reference = %resource.subject.reference)"
Severity:    #error

Invariant:   oe-ref-1
Description: "The referral names exactly one setting from the setting CodeSystem"
Expression:  "orderDetail.coding.where(system = 'https://fhir.onco-exercise.org/CodeSystem/setting').count() = 1"
Severity:    #error

Profile:     OncoExercisePrescription
Parent:      PAServiceRequest
Id:          onco-exercise-prescription
Title:       "Oncology exercise prescription"
Description: "One phase of one exercise component performed by the patient (SNOMED 229065009 exercise therapy): FITT in occurrenceTiming, precautions in orderDetail, instructions in patientInstruction, reason = the cancer."
// why: the business identifier (<signing key>-<role>) makes signing idempotent (conditional create on it)
* identifier 1..*
// why: tells an exercise prescription (done by the patient, IG workflow "exercise prescription") from a referral
* code = $sct#229065009
// why: the IG's exercise-prescription workflow: the patient performs it; a prescription for someone else is an error
* obeys oe-rx-1
// why: precaution codes must be ones our rules and the exercise service's handout know (terminology/)
* orderDetail
  * ^slicing.discriminator.type = #pattern
  * ^slicing.discriminator.path = "coding.system"
  * ^slicing.rules = #open
// why: as above
* orderDetail contains precaution 0..*
// why: as above
* orderDetail[precaution] ^patternCodeableConcept.coding[0].system = "https://fhir.onco-exercise.org/CodeSystem/precaution"
// why: as above
* orderDetail[precaution] from https://fhir.onco-exercise.org/ValueSet/precaution (required)

Profile:     OncoExerciseReferral
Parent:      PAServiceRequest
Id:          onco-exercise-referral
Title:       "Oncology exercise referral"
Description: "The referral to an exercise service (SNOMED 390893007): setting and precautions in orderDetail, stop rules in patientInstruction, the exercise prescriptions and data in supportingInfo."
// why: the business identifier (<signing key>-referral) makes signing idempotent (conditional create on it)
* identifier 1..*
// why: tells the referral (to a service, with a fulfil Task) from an exercise prescription
* code = $sct#390893007
// why: the exercise service needs the setting (home-based, community, supervised) to triage the referral
* obeys oe-ref-1
// why: a referral is addressed to one service: the one its fulfil Task is owned by
* performer 1..1
// why: precaution and setting codes must be ones our rules and the exercise service know (terminology/)
* orderDetail
  * ^slicing.discriminator.type = #pattern
  * ^slicing.discriminator.path = "coding.system"
  * ^slicing.rules = #open
// why: as above
* orderDetail contains precaution 0..* and setting 0..1
// why: as above
* orderDetail[precaution] ^patternCodeableConcept.coding[0].system = "https://fhir.onco-exercise.org/CodeSystem/precaution"
// why: as above
* orderDetail[precaution] from https://fhir.onco-exercise.org/ValueSet/precaution (required)
// why: as above
* orderDetail[setting] ^patternCodeableConcept.coding[0].system = "https://fhir.onco-exercise.org/CodeSystem/setting"
// why: as above
* orderDetail[setting] from https://fhir.onco-exercise.org/ValueSet/setting (required)

Profile:     OncoExerciseCarePlan
Parent:      PACarePlan
Id:          onco-exercise-careplan
Title:       "Oncology exercise care plan"
Description: "The signed exercise plan: narrative (FITT, phases, precautions, why), period, goals, one activity per exercise prescription and the referral."
// why: the business identifier (<signing key>-careplan) makes signing idempotent (conditional create on it)
* identifier 1..*

Profile:     OncoExerciseGoal
Parent:      PAGoal
Id:          onco-exercise-goal
Title:       "Oncology exercise goal"
Description: "A long-term activity target (Exercise Vital Sign LOINC codes) or an in-session intensity target (heart rate, RPE)."
// why: the business identifier (<signing key>-goal-...) makes signing idempotent (conditional create on it)
* identifier 1..*

Profile:     OncoExerciseTask
Parent:      PATaskForReferralManagement
Id:          onco-exercise-task
Title:       "Oncology exercise referral task"
Description: "The fulfil Task that asks the exercise service to act on the referral."
// why: the business identifier (<signing key>-task) makes signing idempotent (conditional create on it)
* identifier 1..*

Invariant:   oe-clear-1
Description: "A completed clearance says who cleared it, when, what was reviewed and the clinician's note"
Expression:  "status = 'completed' implies (executionPeriod.end.exists() and output.exists() and note.exists())"
Severity:    #error

Invariant:   oe-clear-2
Description: "A cancelled clearance says why"
Expression:  "status = 'cancelled' implies statusReason.exists()"
Severity:    #error

Profile:     OncoExerciseClearanceTask
Parent:      Task
Id:          onco-exercise-clearance-task
Title:       "Medical clearance of a deferred exercise referral"
Description: "The clinician's to-do when a plan is deferred by red flags: what must be resolved (input), then who cleared it, when and what was reviewed (owner, executionPeriod.end, output, note). Its focus is the referral it holds back."
// why: the PA IG has no step for a clinician's clearance of a deferred referral, so this derives from core Task (docs/profiles.md); the business identifier (<signing key>-clearance) makes signing idempotent
* identifier 1..*
// why: the clearance is the clinician's approval of the referral it focuses on (task-code approve)
* code 1..1
// why: as above
* code = http://hl7.org/fhir/CodeSystem/task-code#approve
// why: the same order semantics as the PA referral-management Task
* intent = #order
// why: the same statuses the PA referral-management Task uses, so EHR worklists read both alike
* status from http://hl7.org/fhir/us/physical-activity/ValueSet/pa-task-status (required)
// why: says in words what must be resolved before the referral is released
* description 1..1
// why: the referral it holds back
* focus 1..1
// why: as above
* focus only Reference(OncoExerciseReferral)
// why: whose clearance it is
* for 1..1
// why: when the deferral was signed
* authoredOn 1..1
// why: who deferred it, and who is to clear it
* requester 1..1
// why: as above
* owner 1..1
// why: one input per item to resolve: the clinician confirms each when clearing
* input 1..*
// why: a completed clearance records who, when and what was reviewed
* obeys oe-clear-1
// why: a cancelled clearance (re-deferred, or no longer needed) says why
* obeys oe-clear-2
// why: notes as the PA IG writes them on Tasks: authored and timed
* note.author[x] 1..1
// why: as above
* note.time 1..1
